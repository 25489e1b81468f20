"""Check the caller's pairs and cut them into requests the server accepts.

The server refuses (413) more than ``max_pairs_per_request`` pairs (256 by default) and TorchServe
refuses bodies over ``max_request_size`` (2 MiB in this repository's config.properties), so a request
holds at most ``batch_size`` pairs AND at most ``MAX_REQUEST_BYTES`` of JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from instructor_client.errors import InvalidPairError

Pair = tuple[str, str]

# The server's default max_pairs_per_request: a larger batch_size is refused before anything is sent.
MAX_PAIRS_PER_REQUEST = 256
# Under TorchServe's max_request_size (2 MiB here, 6.25 MiB in a stock TorchServe) with room to spare.
MAX_REQUEST_BYTES = 1_900_000


def check_pairs(pairs: Iterable[Sequence[str]]) -> list[Pair]:
    """The pairs as ``(instruction, text)`` tuples; InvalidPairError names the first bad one."""
    checked: list[Pair] = []
    for index, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidPairError(index, f"must be (instruction, text); got {type(pair).__name__} {pair!r:.80}")
        instruction, text = pair
        if not isinstance(instruction, str) or not isinstance(text, str):
            raise InvalidPairError(
                index, f"instruction and text must be strings; got {type(instruction).__name__}, {type(text).__name__}"
            )
        checked.append((instruction, text))
    return checked


def check_batch_size(batch_size: int, max_pairs: int = MAX_PAIRS_PER_REQUEST) -> int:
    """``batch_size`` if 1 <= batch_size <= max_pairs, else ValueError saying why."""
    if not isinstance(batch_size, int) or not 1 <= batch_size <= max_pairs:
        raise ValueError(f"batch_size must be 1..{max_pairs} (the server's max_pairs_per_request); got {batch_size!r}")
    return batch_size


def encode_pair(pair: Pair, index: int) -> bytes:
    """One pair as the JSON bytes of ``[instruction, text]``; a lone surrogate is refused here."""
    try:
        return json.dumps(pair, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPairError(index, "not valid Unicode (it contains a lone surrogate)") from None


def plan_requests(encoded: Sequence[bytes], batch_size: int,
                  max_bytes: int = MAX_REQUEST_BYTES) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` ranges over ``encoded`` of at most batch_size pairs and ~max_bytes each."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, item in enumerate(encoded):
        if index > start and (index - start >= batch_size or size + len(item) + 1 > max_bytes):
            ranges.append((start, index))
            start, size = index, 0
        size += len(item) + 1
    if start < len(encoded):
        ranges.append((start, len(encoded)))
    return ranges
