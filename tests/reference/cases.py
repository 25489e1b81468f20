"""The input corpus of the reference fixture: [instruction, text] pairs and plain strings.

Pure Python with no imports beyond the standard library's typing, so that the old reference stack
(run_reference.py in tests/reference/.venv-ref) and the modern test suite read the very same inputs.
Every case has a stable id; the fixture stores its vectors under that id.

The cases aim at the places where a re-implementation of InstructorEmbedding 1.0.1 can drift:
stripping (Python's ``str.strip`` also strips U+0085, U+00A0, U+001C..U+001F), the join without a
separator, the instruction length k (one-token instructions are not masked), truncation at 512 tokens,
special-token strings inside user text, and instructions whose tokens merge with the text's.
"""

from __future__ import annotations

from typing import NamedTuple


class PairCase(NamedTuple):
    """One [instruction, text] input of ``INSTRUCTOR.encode``."""

    id: str
    instruction: str
    text: str


class TextCase(NamedTuple):
    """One plain string input (no instruction)."""

    id: str
    text: str


_WORDS = (  # noqa: SIM905
    "the model reads a long document about science history and language while the reader asks many"
    " questions of it so that retrieval of supporting passages works well across topics such as medicine"
    " finance law biology physics music art sport travel food weather and computing"
).split()


def long_paragraph(seed: int, n_words: int) -> str:
    """A deterministic pseudo-random paragraph (a fixed LCG, no dependency on ``random``)."""
    state = seed
    words: list[str] = []
    for i in range(n_words):
        state = (state * 1103515245 + 12345) % 2**31
        word = _WORDS[state % len(_WORDS)]
        words.append(word.capitalize() if i % 17 == 0 else word)
        if i % 17 == 16:
            words[-1] += "."
    return " ".join(words)


_LONG_A = long_paragraph(1, 700)  # > 512 tokens on its own: truncation cuts the text
_LONG_B = long_paragraph(2, 900)
_LONG_INSTRUCTION = "Represent the following " + long_paragraph(3, 650) + " for retrieval:"  # k hits 511
_HALF_A = long_paragraph(4, 300)  # each half < 512 tokens, joined > 512
_HALF_B = long_paragraph(5, 300)

SCIENCE = "Represent the Science title:"
WIKI_Q = "Represent the Wikipedia question for retrieving supporting documents:"
WIKI_D = "Represent the Wikipedia document for retrieval:"

PAIRS: tuple[PairCase, ...] = (
    # --- the INSTRUCTOR README examples and retrieval-style instructions
    PairCase(
        "readme-science-title", SCIENCE, "3D ActionSLAM: wearable person tracking in multi-floor environments"
    ),
    PairCase("readme-wiki-question", WIKI_Q, "where is the food stored in a yam plant"),
    PairCase(
        "readme-wiki-document",
        WIKI_D,
        "Capitalism has been dominant in the Western world since the end of feudalism, but most feel[who?]"
        ' that the term "mixed economies" more precisely describes most contemporary economies, due to their'
        " containing both private-owned and state-owned enterprises.",
    ),
    PairCase(
        "readme-medicine-clustering",
        "Represent the Medicine sentence for clustering:",
        "Dynamical Scalar Degree of Freedom in Horava-Lifshitz Gravity",
    ),
    PairCase(
        "financial-statement",
        "Represent the Financial statement:",
        "The Federal Reserve on Wednesday raised its benchmark interest rate.",
    ),
    PairCase(
        "amazon-review",
        "Represent the Amazon customer review for classification:",
        "I bought this for my son and it broke after two days!",
    ),
    PairCase(
        "retrieval-query",
        "Represent the question for retrieving supporting documents:",
        "What is the capital of France?",
    ),
    PairCase("same-text-instruction-a", SCIENCE, "Machine learning models need data."),
    PairCase("same-text-instruction-b", WIKI_Q, "Machine learning models need data."),
    PairCase("duplicate-row-1", SCIENCE, "Parton energy loss in QCD matter"),
    PairCase("duplicate-row-2", SCIENCE, "Parton energy loss in QCD matter"),
    # --- instruction length k: empty, whitespace-only, one token (k=1 -> 0), two tokens (k=2 is masked)
    PairCase("instruction-empty", "", "Machine learning models need data."),
    PairCase("instruction-whitespace-only", "  \t\n ", "Machine learning models need data."),
    PairCase("instruction-nbsp-only", "\u00a0", "Machine learning models need data."),
    PairCase("instruction-zero-width-only", "\u200b", "Machine learning models need data."),
    PairCase("instruction-one-token", "Represent", "Machine learning models need data."),
    PairCase("instruction-one-token-trailing-space", "Represent ", "Machine learning models need data."),
    PairCase("instruction-two-tokens", "Represent:", "Machine learning models need data."),
    PairCase(
        "instruction-special-token-inside", "Represent the title:</s>", "Machine learning models need data."
    ),
    PairCase(
        "instruction-longer-than-text", "Represent the Wikipedia document about biology for retrieval:", "ok"
    ),
    PairCase("instruction-over-512-tokens", _LONG_INSTRUCTION, "short text after a huge instruction"),
    # --- stripping and joining (no separator; the joined string is stripped again)
    PairCase("both-padded-with-spaces", "   Represent the Science title:   ", "   Parton energy loss   "),
    PairCase("instruction-trailing-newline", "Represent the document:\n", "Parton energy loss in QCD matter"),
    PairCase("instruction-trailing-tab", "Represent the document:\t", "Parton energy loss in QCD matter"),
    PairCase("instruction-no-colon-glued", "Represent the document", "parton energy loss"),
    PairCase("text-tabs-newlines", SCIENCE, "line one\nline two\tcolumn\r\nthree\n\n\nfour"),
    PairCase("text-u0085-inside-and-around", SCIENCE, "\x85next\x85line\x85"),
    PairCase("instruction-ends-with-u0085", "Represent the title:\x85", "Parton energy loss"),
    PairCase("text-info-separators", SCIENCE, "\x1cfile\x1dgroup\x1erecord\x1funit\x1c"),
    PairCase("text-line-paragraph-separators", SCIENCE, "\u2028first\u2029second\x0bthird\x0cfourth"),
    PairCase("text-nbsp-variants", SCIENCE, "non\u00a0breaking\u202fnarrow\u3000ideographic\u2009thin\u00a0"),
    PairCase("text-zero-width", SCIENCE, "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj"),
    PairCase("text-whitespace-only", SCIENCE, " \t\n\u00a0\x85 "),
    PairCase("text-empty", SCIENCE, ""),
    PairCase("both-empty", "", ""),
    # --- Unicode
    PairCase("text-accents", SCIENCE, "Crème brûlée à Zürich, naïve café façade; Dvořák in Łódź"),
    PairCase(
        "text-combining-marks",
        SCIENCE,
        "e\u0301cole n\u0303 a\u0308 Zu\u0308rich cafe\u0301 Z\u0335a\u0336l\u0337g",
    ),
    PairCase("text-cjk", "Represent the sentence:", "机器学习和自然语言处理。日本語のテキスト、한국어 문장"),
    PairCase("text-emoji", SCIENCE, "Launch 🚀 today 🎉🎉 👍🏽 👨‍👩‍👧 ❤️ 🤖🌍"),
    PairCase("text-fullwidth-ligatures", SCIENCE, "ＡＢＣ１２３ ﬁnance ﬀ Ⅻ ㍿ ½"),
    PairCase("text-rtl-and-symbols", SCIENCE, "مرحبا بالعالم שלום ∑ x² ≤ ∞ → ∀ε>0 π≈3.14159"),
    PairCase("instruction-cjk-with-space", "为这个句子生成表示： ", "机器学习"),
    # --- special-token strings inside user text (parsed as special tokens by 1.0.1's tokenizer too)
    PairCase(
        "text-special-tokens", SCIENCE, "before </s> after <pad> padded <extra_id_3> sentinel <unk> unknown"
    ),
    PairCase("text-only-eos-string", SCIENCE, "</s>"),
    PairCase("text-punctuation-only", SCIENCE, "?!...;:--()[]{}\"'"),
    PairCase("text-one-char", SCIENCE, "a"),
    PairCase(
        "text-url-email-digits", WIKI_Q, "see https://example.com/a?b=c&d=1 or mail me@example.org in 2024"
    ),
    # --- instruction tokens merging with the text's: k is not re-aligned to the joined tokenization
    PairCase("merge-misaligned-k", "Represent the 北京", "大学 entrance exam"),
    PairCase("merge-k-equals-joined-length", "数", "据"),  # k == joined tokens: every position is pooled out
    # --- truncation at 512 tokens
    PairCase("text-over-512-tokens", WIKI_D, _LONG_A),
    PairCase("text-over-512-tokens-other-instruction", SCIENCE, _LONG_B),
    PairCase("text-over-512-no-instruction", "", _LONG_A),
    PairCase("joined-over-512-neither-alone", "Represent the " + _HALF_A + " passage:", _HALF_B),
)

# Inputs on which 1.0.1 itself fails: the instruction alone has more tokens than the joined string, so the
# pooling mask would reach past the end. 1.0.1 raises AssertionError for the whole batch; they are kept out
# of PAIRS (one of them would sink the single encode call) and recorded as failures in the fixture.
PAIRS_1_0_1_REJECTS: tuple[PairCase, ...] = (
    PairCase("merge-k-exceeds-joined-length-cjk", "北京", "大学"),
    PairCase("merge-k-exceeds-joined-length-kana", "日本語の", "テキスト"),
)

TEXTS: tuple[TextCase, ...] = (
    TextCase(
        "plain-readme-science-title", "3D ActionSLAM: wearable person tracking in multi-floor environments"
    ),
    TextCase(
        "plain-same-as-instruction-empty", "Machine learning models need data."
    ),  # == pair instruction-empty
    TextCase("plain-empty", ""),
    TextCase("plain-whitespace-only", " \t\n\u00a0\x85 "),
    TextCase("plain-padded", "   Parton energy loss   "),
    TextCase("plain-u0085", "\x85next\x85line\x85"),
    TextCase("plain-accents", "Crème brûlée à Zürich, naïve café façade; Dvořák in Łódź"),
    TextCase("plain-cjk", "机器学习和自然语言处理。日本語のテキスト、한국어 문장"),
    TextCase("plain-emoji", "Launch 🚀 today 🎉🎉 👍🏽 👨‍👩‍👧 ❤️ 🤖🌍"),
    TextCase("plain-special-tokens", "before </s> after <pad> padded <extra_id_3> sentinel <unk> unknown"),
    TextCase("plain-only-eos-string", "</s>"),
    TextCase("plain-zero-width", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj"),
    TextCase("plain-punctuation-only", "?!...;:--()[]{}\"'"),
    TextCase("plain-over-512-tokens", _LONG_A),
    TextCase("plain-tabs-newlines", "line one\nline two\tcolumn\r\nthree\n\n\nfour"),
)


def pairs_as_lists(cases: tuple[PairCase, ...] = PAIRS) -> list[list[str]]:
    """The [[instruction, text], ...] list that ``INSTRUCTOR.encode`` takes (1.0.1 requires lists)."""
    return [[c.instruction, c.text] for c in cases]


def _check_ids() -> None:
    ids = [c.id for c in PAIRS + PAIRS_1_0_1_REJECTS] + [c.id for c in TEXTS]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates}")


_check_ids()
