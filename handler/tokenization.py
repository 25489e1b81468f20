"""Tokenize texts as Hugging Face truncation at ``max_length`` would, at a cost bounded by ``max_length``.

Truncation keeps only the first ``max_length`` tokens (special tokens included), so tokenizing the rest of a
long text is wasted work, and an attacker's lever: one character can normalise into many (U+FDFA becomes 18
characters under NFKC), so a 20,000-character string can cost 100k+ tokens and seconds of CPU.

Why a prefix is exact: tokenizers normalise and pre-tokenize a text into words (whitespace- and, for BERT,
punctuation-separated) and segment each word on its own. A prefix of the text, cut at a whitespace, yields
the same words in the same order, except that its last word may be cut short. So when the prefix's tokens
WITHOUT its last word already reach the limit, the first ``limit`` tokens are exactly the full text's. If they
do not, the prefix grows (by the characters per token seen so far) until they do or the prefix is the whole
text. ``tests/test_tokenization.py`` checks this against the full tokenization on real tokenizers and
expansion-heavy Unicode.

Texts of up to 4 characters per token of the limit are simply tokenized whole with the library's own
truncation (one call for a whole batch); only longer ones go by prefixes. What stays unbounded is a text that
yields few tokens per character (one 20,000-character word): its whole length must be tokenized to know its
first tokens. ``seconds_per_char`` measures that worst case so the
serving adapter can budget characters per dynamic batch.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Encoding, Tokenizer

# Texts up to this many characters per token of the limit are tokenized whole, in one call that truncates
# as the library does (every workload text, and English up to ~2,000 characters); longer ones go by prefixes.
_WHOLE_CHARS_PER_TOKEN = 4
_MARGIN = 1.25  # the next prefix aims this much past the limit, at the characters per token seen so far
_MIN_GROWTH, _MAX_GROWTH = 2, 16
_POOL_MIN_TEXTS = 8
# Characters given to the tokenizer in one call: its encodings live until the call's results are read.
# Counted before normalisation, which can multiply them by 18 (U+FDFA).
_CHARS_PER_CALL = 256_000
# A text whose whole length must be tokenized costs the most per character when it is one long word of
# punctuation, CJK characters, one letter or combining marks (measured on T5 Unigram and BERT WordPiece).
_WORST_CASE_PROBE = " ".join(["." * 2000, "\u4e2d" * 2000, "x" * 2000, "e" + "\u0301" * 2000])
# Growing prefixes re-tokenize the start of a text. A text that must be read whole (few tokens per character,
# the costly case this prices) grows x16 a round: ~1.1x its length in all; 1.5 leaves margin.
PREFIX_ROUNDS_OVERHEAD = 1.5


class BoundedTokenizer:
    """One ``tokenizers.Tokenizer`` that never tokenizes more of a text than its first ``max_length`` tokens need."""

    def __init__(self, tokenizer_file: str | Path, max_length: int) -> None:
        self._tokenizer = _load(tokenizer_file)  # no truncation: for prefixes
        self._truncating = _load(tokenizer_file)  # Hugging Face truncation at max_length: for whole texts
        self._truncating.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length
        # Room for the text's own tokens once the post-processor's special tokens (</s>; [CLS] [SEP]) are added.
        self._content_limit = max(0, max_length - self._tokenizer.num_special_tokens_to_add(False))
        self._whole_chars = max(16, self._content_limit * _WHOLE_CHARS_PER_TOKEN)
        self._template = self._special_token_template()

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """(token ids with special tokens, truncated?) per text, exactly as truncation at max_length gives them."""
        results: list[tuple[list[int], bool] | None] = [None] * len(texts)
        short = [i for i, text in enumerate(texts) if len(text) <= self._whole_chars]
        for group in _groups(short, [len(texts[i]) for i in short]):
            for i, encoding in zip(group, self._encode_many([texts[i] for i in group], whole=True), strict=True):
                results[i] = encoding.ids, bool(encoding.overflowing)
        # Long texts start from one character per token of the limit: enough to learn their characters per
        # token (English then needs one more round of ~2,900 characters), and a text that expands under NFKC
        # produces a few thousand tokens instead of tens of thousands.
        window = {i: max(16, self._content_limit) for i, text in enumerate(texts) if len(text) > self._whole_chars}
        while window:
            prefixes = {i: _prefix(texts[i], chars) for i, chars in window.items()}
            next_window = {}
            for group in _groups(list(prefixes), [len(prefix) for prefix in prefixes.values()]):
                encodings = self._encode_many([prefixes[i] for i in group], whole=False)
                for i, encoding in zip(group, encodings, strict=True):
                    whole = len(prefixes[i]) == len(texts[i])
                    complete = 0 if whole else _complete_tokens(encoding)
                    if whole or complete >= self._content_limit:
                        results[i] = self._finish(encoding, truncated=len(encoding) > self._content_limit)
                    else:
                        growth = self._content_limit * _MARGIN / max(complete, 1)
                        next_window[i] = int(window[i] * min(max(growth, _MIN_GROWTH), _MAX_GROWTH))
            window = next_window
        return results  # type: ignore[return-value]  # every slot is filled once the loop ends

    def _encode_many(self, texts: list[str], whole: bool) -> list[Encoding]:
        """Whole texts: truncated, special tokens added; prefixes: neither (they are checked, then finished)."""
        tokenizer = self._truncating if whole else self._tokenizer
        # encode_batch runs on the tokenizer's thread pool (when enabled): worth it for many texts; for a
        # few, waking the pool's threads costs more than it saves.
        if len(texts) < _POOL_MIN_TEXTS:
            return [tokenizer.encode(text, add_special_tokens=whole) for text in texts]
        return tokenizer.encode_batch(texts, add_special_tokens=whole)

    def seconds_per_char(self) -> float:
        """Time per character to tokenize a text that must be tokenized whole (the worst case), one thread."""
        self._tokenizer.encode(_WORST_CASE_PROBE[:100])  # first-call overheads out of the measurement
        started = time.perf_counter()
        self._tokenizer.encode(_WORST_CASE_PROBE, add_special_tokens=False)
        return (time.perf_counter() - started) / len(_WORST_CASE_PROBE)

    def _finish(self, encoding: Encoding, truncated: bool) -> tuple[list[int], bool]:
        """The special tokens added to the first content_limit tokens, as the library's post-processor does."""
        if self._template is not None:
            before, after = self._template
            return before + encoding.ids[:self._content_limit] + after, truncated
        # A post-processor that is not a fixed prefix/suffix: the library's own (slower: Encoding.truncate
        # keeps the cut tokens as overflow, and post_process processes them too).
        if truncated:
            encoding.truncate(self._content_limit)
        return self._tokenizer.post_process(encoding, None, True).ids, truncated

    def _special_token_template(self) -> tuple[list[int], list[int]] | None:
        """(ids before, ids after) the text's tokens when the post-processor only wraps them in fixed special
        tokens (T5: [] and [</s>]; BERT: [CLS] and [SEP]); checked on probes, else None."""
        probes = ["a", "Represent the title: 3D ActionSLAM", "x" * 50]
        plain = [self._tokenizer.encode(p, add_special_tokens=False).ids for p in probes]
        full = [self._tokenizer.encode(p, add_special_tokens=True).ids for p in probes]
        n = len(plain[0])
        for start in range(len(full[0]) - n + 1):
            if full[0][start:start + n] == plain[0]:
                before, after = full[0][:start], full[0][start + n:]
                if all(f == before + q + after for f, q in zip(full, plain, strict=True)):
                    return before, after
        return None


def _groups(indices: list[int], lengths: list[int]) -> list[list[int]]:
    """Consecutive groups of at most _CHARS_PER_CALL characters (one text at least): an Encoding keeps offsets,
    token strings and masks for every token, ~100 bytes a token, so a call's memory is bounded by its text."""
    groups: list[list[int]] = []
    size = 0
    for index, length in zip(indices, lengths, strict=True):
        if not groups or size + length > _CHARS_PER_CALL:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += length
    return groups


def _load(tokenizer_file: str | Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    # tokenizer.json may carry padding/truncation presets; we pad ourselves and truncate as set here.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _prefix(text: str, chars: int) -> str:
    """``text`` itself if short enough, else about its first ``chars`` characters, cut before a whitespace if
    one is near, else before a character that starts a new grapheme (never between a letter and its accent)."""
    if len(text) <= chars:
        return text
    for cut in range(chars, chars // 2, -1):
        if text[cut].isspace():
            return text[:cut]
    for cut in range(chars, max(chars - 64, 1), -1):
        if _starts_grapheme(text[cut]):
            return text[:cut]
    return text[:chars]


def _starts_grapheme(char: str) -> bool:
    return not unicodedata.category(char).startswith("M") and char not in _JOINERS


# Characters that bind to their neighbours without being combining marks: ZWJ, ZWNJ, variation selectors.
_JOINERS = frozenset("\u200c\u200d" + "".join(chr(c) for c in range(0xFE00, 0xFE10)))


def _complete_tokens(encoding: Encoding) -> int:
    """Tokens of every word but the last one (which the cut may have shortened).

    Asks for the last word's token span instead of reading ``word_ids``: a list of every token's word would
    cost a Python int per token, millions for a batch of long one-word texts."""
    count = len(encoding)
    if count == 0:
        return 0
    last = encoding.token_to_word(count - 1)
    if last is None:
        return count
    span = encoding.word_to_tokens(last)
    return span[0] if span else count
