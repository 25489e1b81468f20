"""Run a function over a sequence of inputs one step ahead of the caller, on a helper thread.

The stages of an encode overlap this way: while the caller embeds chunk i (the accelerator, or torch's own
threads on CPU, both outside the GIL), the helper tokenizes chunk i+1 (the tokenizers library releases the
GIL too). One helper thread: the stage it runs is not thread-safe, and one chunk ahead is all that overlap needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ahead(function: Callable[[In], Out], inputs: Sequence[In]) -> Iterator[Out]:
    """``function(x)`` for each input, in order; the next one is computed while the caller uses this one.

    A single input runs on the caller's thread (no thread to start). An exception of ``function`` is raised
    where its result is taken. Close the iterator (``contextlib.closing``) to stop early: work not yet
    started is cancelled and the helper is joined.
    """
    if len(inputs) <= 1:
        yield from (function(x) for x in inputs)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookahead")
    try:
        next_future: Future[Out] = pool.submit(function, inputs[0])
        for index in range(len(inputs)):
            future = next_future
            if index + 1 < len(inputs):
                next_future = pool.submit(function, inputs[index + 1])
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
