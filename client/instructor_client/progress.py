"""A progress bar in pairs (rate in pairs/s, ETA) on stderr, or a no-op stand-in."""

from __future__ import annotations

from typing import Any


class NoBar:
    """Accepts what a tqdm bar accepts and shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def progress_bar(total: int, enabled: bool, initial: int = 0) -> Any:
    """A tqdm bar counting pairs when ``enabled``; ``initial`` pairs were done before (e.g. a resumed run)."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="pair", unit_scale=True, dynamic_ncols=True, smoothing=0.1)
