"""Bounded tokenization gives exactly what tokenizing the whole text and truncating gives, at a bounded cost.

Checked on the two tokenizer families served here (T5 Unigram with its NFKC charsmap, from the tiny INSTRUCTOR
models; BERT WordPiece, from the demo model) against the library's own truncation of the whole text.
"""

from __future__ import annotations

import functools
import random

import pytest
from tokenizers import Tokenizer

from handler.tokenization import BoundedTokenizer

# Texts that stress the prefix rule: expansion under NFKC (U+FDFA -> 18 characters, ligatures, full-width),
# combining marks, words without spaces, CJK, runs of whitespace, zero-width characters, special tokens.
PIECES = ["word", "Représentation", "\ufdfa", "\ufb01", "ＦＵＬＬ", "e\u0301", "\u0301", "中文字", "  ", "\t", "\n",
          "\u200b", "\u200d", "👍🏽", "x" * 40, "...", "3D", "</s>", "[SEP]", "a-b_c", "\u00a8", "ﷺ", " "]


def random_text(rng: random.Random, pieces: int) -> str:
    return "".join(rng.choice(PIECES) + (" " if rng.random() < 0.6 else "") for _ in range(pieces))


@functools.cache
def _reference_tokenizers(tokenizer_file: str, max_length: int) -> tuple[Tokenizer, Tokenizer]:
    whole = Tokenizer.from_file(tokenizer_file)
    whole.no_padding()
    whole.no_truncation()
    truncating = Tokenizer.from_file(tokenizer_file)
    truncating.no_padding()
    truncating.enable_truncation(max_length, strategy="longest_first")
    return whole, truncating


def full_then_truncated(tokenizer_file, text: str, max_length: int) -> tuple[list[int], bool]:
    """What Hugging Face truncation (1.0.1's way) gives: the whole text tokenized, then cut."""
    whole, truncating = _reference_tokenizers(str(tokenizer_file), max_length)
    return truncating.encode(text).ids, len(whole.encode(text).ids) > max_length


@pytest.fixture(scope="module")
def tokenizer_files(tiny_models, demo_model_dir):
    return {"t5-unigram": tiny_models["tiny-instructor-relu"] / "tokenizer.json",
            "bert-wordpiece": demo_model_dir / "tokenizer.json"}


@pytest.mark.parametrize("family", ["t5-unigram", "bert-wordpiece"])
@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_random_hostile_texts_tokenize_exactly_as_whole_text_truncation(tokenizer_files, family, max_length):
    rng = random.Random(f"{family}-{max_length}")
    texts = [random_text(rng, rng.choice([1, 5, 30, 200, 1500])) for _ in range(120)]
    texts += ["\ufdfa" * 3000, "x" * 5000, "中" * 3000, "e" + "\u0301" * 3000, " " * 3000 + "end", ""]
    bounded = BoundedTokenizer(tokenizer_files[family], max_length)
    got = bounded.encode(texts)
    for text, result in zip(texts, got, strict=True):
        assert result == full_then_truncated(tokenizer_files[family], text, max_length), repr(text[:80])


class CountingTokenizer:
    """Wraps a tokenizers.Tokenizer and counts the characters it is given."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.chars = 0

    def encode_batch(self, texts, add_special_tokens=True):
        self.chars += sum(len(text) for text in texts)
        return self.inner.encode_batch(texts, add_special_tokens=add_special_tokens)

    def encode(self, text, add_special_tokens=True):
        self.chars += len(text)
        return self.inner.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize(("text", "most_chars"), [
    ("\ufdfa" * 20000, 600),  # 360,000 characters after NFKC; one 511-character prefix is enough
    ("Represent the document for retrieval: " * 600, 5000),  # 22,800 characters of English: two prefixes
])
def test_long_texts_are_tokenized_only_as_far_as_the_limit_needs(tokenizer_files, text, most_chars):
    bounded = BoundedTokenizer(tokenizer_files["t5-unigram"], 512)
    counting = CountingTokenizer(bounded._tokenizer)
    bounded._tokenizer = counting
    [(ids, truncated)] = bounded.encode([text])
    assert truncated and len(ids) == 512
    assert counting.chars <= most_chars, f"read {counting.chars} of {len(text)} characters"
    assert (ids, truncated) == full_then_truncated(tokenizer_files["t5-unigram"], text, 512)


def test_the_worst_case_price_per_character_is_measured(tokenizer_files):
    assert 0 < BoundedTokenizer(tokenizer_files["t5-unigram"], 512).seconds_per_char() < 1e-3


def test_large_inputs_go_to_the_tokenizer_in_bounded_calls_with_the_same_result(tokenizer_files, monkeypatch):
    """An Encoding keeps ~100 bytes per token: 4,096 one-word texts of 8,000 characters in one call held
    gigabytes. Calls are capped in characters; the result must not depend on the cap."""
    from handler import tokenization

    texts = ["i" * 3000 + "x" * 3000, "word " * 300, "short", "中" * 2500] * 6
    bounded = BoundedTokenizer(tokenizer_files["t5-unigram"], 128)
    expected = bounded.encode(texts)
    counting = CountingTokenizer(bounded._tokenizer)
    calls = []
    counting.encode_batch = lambda batch, add_special_tokens=True: calls.append(sum(map(len, batch))) or \
        counting.inner.encode_batch(batch, add_special_tokens=add_special_tokens)
    bounded._tokenizer = counting
    monkeypatch.setattr(tokenization, "_CHARS_PER_CALL", 20_000)
    assert bounded.encode(texts) == expected
    assert calls and max(calls) <= 20_000 + 6000  # one text may exceed the cap alone


@pytest.mark.parametrize("family", ["t5-unigram", "bert-wordpiece"])
def test_special_tokens_are_added_as_the_library_adds_them(tokenizer_files, family):
    """The fixed prefix/suffix taken from the post-processor equals the library's own post-processing."""
    bounded = BoundedTokenizer(tokenizer_files[family], 64)
    assert bounded._template is not None  # both families wrap the text in fixed special tokens
    texts = ["word " * 200, "x" * 3000, "a b", "</s> [SEP] inside", "\ufdfa" * 50]
    fast = bounded.encode(texts)
    bounded._template = None  # the library's path: Encoding.truncate + post_process
    assert bounded.encode(texts) == fast
