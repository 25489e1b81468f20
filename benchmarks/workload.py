"""Deterministic benchmark pairs: instruction 8-14 tokens + text 8-180 tokens (+ </s>: mean ~106 tokens).

Every word comes from the benchmark tokenizer's vocabulary (make_bench_model.py), one token each, so a pair's
token count is known by construction; ``check_lengths`` confirms it with the tokenizer itself. A workload uses
a fixed set of distinct instructions (``N_INSTRUCTIONS``), as a real client does.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from benchmarks.make_bench_model import INSTRUCTION_WORDS, vocabulary_words

Pair = tuple[str, str]
INSTRUCTION_TOKENS = (8, 14)  # tokens of instruction.strip() without </s> (":" is one of them)
TEXT_TOKENS = (8, 180)
N_INSTRUCTIONS = 48
SEED = 20260101


@dataclasses.dataclass(frozen=True)
class LengthStats:
    pairs: int
    tokens: int  # joined pair + </s>, what the encoder sees
    mean: float
    min: int
    max: int
    instruction_min: int
    instruction_max: int


def instructions(rng: random.Random, count: int = N_INSTRUCTIONS) -> list[tuple[str, int]]:
    """(instruction, tokens) pairs: "Represent the ... :" with 8-14 tokens, trailing space as hkunlp examples."""
    out = []
    middle = [w for w in INSTRUCTION_WORDS if w not in ("Represent", "the")]
    for i in range(count):
        n_tokens = INSTRUCTION_TOKENS[0] + i % (INSTRUCTION_TOKENS[1] - INSTRUCTION_TOKENS[0] + 1)
        words = ["Represent", "the", *rng.sample(middle, n_tokens - 3)]  # + ":" -> n_tokens
        out.append((" ".join(words) + ": ", n_tokens))
    return out


def make_pairs(n: int, seed: int = SEED) -> list[Pair]:
    """n pairs; the same n and seed always give the same pairs."""
    rng = random.Random(seed)
    vocab = vocabulary_words()
    prompts = instructions(rng)
    pairs = []
    for _ in range(n):
        instruction, _ = prompts[rng.randrange(len(prompts))]
        n_text = rng.randint(*TEXT_TOKENS)
        pairs.append((instruction, " ".join(rng.choice(vocab) for _ in range(n_text))))
    return pairs


def expected_tokens(pair: Pair) -> int:
    """Tokens of the joined pair by construction: instruction words + ':' + text words + </s>."""
    instruction, text = pair
    return len(instruction.split()) + 1 + len(text.split()) + 1


def check_lengths(pairs: Sequence[Pair], tokenizer_file: Path) -> LengthStats:
    """Tokenize the joined pairs as the encoder does; raise if any count differs from the construction."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    joined = [(instruction + text.strip()).strip() for instruction, text in pairs]
    counts = [len(e.ids) for e in tokenizer.encode_batch(joined)]
    instruction_counts = [len(e.ids) - 1 for e in tokenizer.encode_batch([i.strip() for i, _ in pairs])]
    for pair, count in zip(pairs, counts, strict=True):
        if count != expected_tokens(pair):
            raise AssertionError(f"pair tokenizes to {count} tokens, expected {expected_tokens(pair)}: {pair!r}")
    if min(instruction_counts) < INSTRUCTION_TOKENS[0] or max(instruction_counts) > INSTRUCTION_TOKENS[1]:
        raise AssertionError(f"instruction lengths {min(instruction_counts)}-{max(instruction_counts)} out of spec")
    return LengthStats(len(pairs), sum(counts), sum(counts) / len(counts), min(counts), max(counts),
                       min(instruction_counts), max(instruction_counts))


if __name__ == "__main__":
    import sys

    stats = check_lengths(make_pairs(4096), Path(sys.argv[1]) / "tokenizer.json")
    print(stats)
