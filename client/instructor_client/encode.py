"""``encode(sentences, ...)`` as INSTRUCTOR (InstructorEmbedding 1.0.1) and sentence-transformers users write it.

    model = InstructorClient("http://127.0.0.1:8080", "instructor-large", key_file="key_file.json")
    vectors = model.encode([["Represent the Science title:", "3D ActionSLAM ..."], ...])  # numpy (n, dim)
    vector = model.encode("plain text")                                                   # numpy (dim,)

``sentences`` is what ``INSTRUCTOR.encode`` takes: ``[instruction, text]`` rows, or plain strings (embedded with
no instruction, or with ``prompt`` as sentence-transformers names it), or one string. The keyword arguments keep
1.0.1's names and defaults (``batch_size=32``, ``show_progress_bar``, ``output_value``, ``convert_to_numpy``,
``convert_to_tensor``, ``device``, ``normalize_embeddings``). ``device`` is accepted and has no effect: the
server's device computes. Unlike 1.0.1, rows that mix pairs and strings, or pairs of another length, are refused
with a ValueError naming the row, instead of being embedded wrongly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence, Set, Sized
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from instructor_client.client import AsyncInstructorClient, InstructorClient

DEFAULT_BATCH_SIZE = 32  # INSTRUCTOR.encode's and SentenceTransformer.encode's default


@dataclasses.dataclass(frozen=True)
class EncodeCall:
    """One ``encode`` call, checked: the pairs to send and how to shape what comes back."""

    pairs: list[tuple[str, str]]
    single: bool
    batch_size: int
    progress: bool
    convert_to_numpy: bool
    convert_to_tensor: bool
    normalize: bool

    def finish(self, vectors: list[list[float]]) -> Any:
        """The vectors in the type 1.0.1 returns for these options."""
        if not len(vectors):
            # No row, so no dimension to shape (numpy cannot reshape 0 items to (0, -1)): an empty array, as
            # SentenceTransformer.encode([]) returns.
            array = np.zeros((0,), dtype=np.float32)
        else:
            array = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if self.normalize and array.ndim == 2:
            array = array / np.clip(np.linalg.norm(array, axis=1, keepdims=True), 1e-12, None)
        if self.convert_to_tensor:
            import torch  # only for convert_to_tensor=True: the client does not need torch otherwise

            result: Any = torch.from_numpy(array)
        elif self.convert_to_numpy:
            result = array
        else:
            result = list(array)  # 1.0.1 gives a list of per-row tensors; here per-row numpy arrays
        return result[0] if self.single else result


def prepare(sentences: Any, *, batch_size: int = DEFAULT_BATCH_SIZE, show_progress_bar: bool | None = None,
            output_value: str | None = "sentence_embedding", convert_to_numpy: bool = True,
            convert_to_tensor: bool = False, device: str | None = None, normalize_embeddings: bool = False,
            prompt: str | None = None) -> EncodeCall:
    """Check ``encode``'s arguments as 1.0.1 names them; ValueError / TypeError name the argument."""
    del device  # the server's device computes; accepted so that INSTRUCTOR code runs unchanged
    if output_value != "sentence_embedding":
        raise ValueError(f"output_value={output_value!r}: the server returns sentence embeddings only "
                         "(output_value='sentence_embedding')")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string; got {type(prompt).__name__}")
    single = isinstance(sentences, str)
    rows = [sentences] if single else sentences
    if _array_like(rows):
        # numpy arrays (df["text"].values) and the like: 1.0.1 and sentence-transformers take anything with a
        # length; read in iteration order (a pandas Series by position, not by its index labels).
        rows = list(rows)
    if not isinstance(rows, Sequence) or isinstance(rows, (bytes, bytearray)):
        raise TypeError(f"sentences must be a string, a list of strings or a list of [instruction, text]; "
                        f"got {type(sentences).__name__}")
    return EncodeCall(pairs=_pairs(rows, prompt or ""), single=single, batch_size=batch_size,
                      progress=bool(show_progress_bar), convert_to_numpy=convert_to_numpy,
                      convert_to_tensor=convert_to_tensor, normalize=normalize_embeddings)


def _array_like(value: Any) -> bool:
    """A sized iterable that is not a Sequence, a string or a mapping: a numpy array or a pandas Series."""
    return (isinstance(value, Sized) and isinstance(value, Iterable) and not isinstance(value, Sequence)
            and not isinstance(value, (str, bytes, bytearray, Mapping, Set)))


def _pairs(rows: Sequence[Any], prompt: str) -> list[tuple[str, str]]:
    if not rows:
        return []
    as_pairs = not isinstance(rows[0], str)
    pairs = []
    for index, row in enumerate(rows):
        if isinstance(row, str):
            if as_pairs:
                raise ValueError(f"sentences[{index}] is a string but sentences[0] is a pair: send all rows as "
                                 "[instruction, text] (use '' for no instruction) or all as strings")
            pairs.append((prompt, row))
            continue
        if not as_pairs:
            raise ValueError(f"sentences[{index}] is {type(row).__name__} but sentences[0] is a string: "
                             "send all rows as strings or all as [instruction, text]")
        if _array_like(row):
            row = list(row)  # a row of a 2-D numpy array of [instruction, text]
        if not isinstance(row, Sequence) or len(row) != 2 or not all(isinstance(part, str) for part in row):
            raise ValueError(f"sentences[{index}] must be [instruction, text] (two strings); got {row!r:.80}")
        pairs.append((row[0], row[1]))
    return pairs


def encode(client: InstructorClient, sentences: Any, **options: Any) -> Any:
    """``INSTRUCTOR.encode`` over a blocking client; ``options`` as ``prepare`` names them."""
    call = prepare(sentences, **options)
    if not call.pairs:
        return call.finish([])
    return call.finish(client.embed(call.pairs, batch_size=min(call.batch_size, client.max_pairs_per_request),
                                    progress=call.progress))


async def aencode(client: AsyncInstructorClient, sentences: Any, **options: Any) -> Any:
    """``encode`` over an async client."""
    call = prepare(sentences, **options)
    if not call.pairs:
        return call.finish([])
    return call.finish(await client.embed(call.pairs,
                                          batch_size=min(call.batch_size, client.max_pairs_per_request),
                                          progress=call.progress))
