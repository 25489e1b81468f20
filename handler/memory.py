"""Hand freed heap memory back to the operating system after large batches.

glibc keeps what a big batch allocated (token lists, padded tensors, parsed bodies) in its arenas after
Python frees it: measured on the tiny model, a batch of 16 requests x 256 pairs x 4,000 characters left the
worker at ~1.15 GB RSS (0.40 GB before), and ``malloc_trim(0)`` brought it back to 0.42 GB. Other C
libraries (musl, macOS) have no malloc_trim: then this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Below this many body bytes in one batch, trimming costs more than it returns.
TRIM_AFTER_BYTES = 4 * 2**20


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_trim()


def release_after(batch_bytes: int) -> bool:
    """After a batch whose request bodies totalled ``batch_bytes``: return free heap pages to the OS.

    Returns True if memory was trimmed.
    """
    if _MALLOC_TRIM is None or batch_bytes < TRIM_AFTER_BYTES:
        return False
    try:
        _MALLOC_TRIM(0)
    except Exception:  # never let housekeeping fail a batch
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
