"""What one dynamic batch may carry, so that no batch runs into TorchServe's responseTimeout (which kills the
worker) or sends a reply the frontend is slow to decode; and which requests of a batch get in.

Three budgets per dynamic batch: characters given to the tokenizer, tokens given to the encoder, predicted
bytes of the worker's reply. Requests are admitted in order: one that does not fit beside the earlier ones
gets 503 (retry at once); one over what a request may carry alone gets 413.

Budgets not set are measured at start-up: what this worker tokenizes (worst-case text) in 10% of
responseTimeout and embeds in 25% of it. A timing can only come out too slow (a busy machine, a cold cache),
never too fast, so the best of several probes is kept and a budget only ever grows when measured again. And a
request ALONE may always carry what the largest valid request needs (max_pairs_per_request pairs of
max_seq_length tokens; of 2 x max_chars_per_text characters; its reply): a request the server took once is
never refused as too large after a restart, whatever the machine was doing when the worker started, while
batches are still packed to the measured budget. Configured budgets are hard limits, for a request alone too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from handler.encoder import InstructorEncoder
from handler.errors import Overloaded, PayloadTooLarge
from handler.settings import Settings
from handler.tokenization import PREFIX_ROUNDS_OVERHEAD

log = logging.getLogger(__name__)

# Shares of responseTimeout a dynamic batch may spend tokenizing (its characters priced at the worst-case
# text) and embedding (its tokens priced at the speed measured at start-up, on a small batch: slower per
# token than a full one). Together ~a third: margin for TorchServe's own work, noise and slower moments, and
# a flood's surplus requests get their 503 within that time rather than after minutes.
TOKENIZE_SHARE_OF_TIMEOUT = 0.1
EMBED_SHARE_OF_TIMEOUT = 0.25
REMEASURE_EVERY_S = 600.0
_PROBES = 3


@dataclasses.dataclass(frozen=True)
class Budgets:
    """What a batch may carry, and what the first request of a batch may carry alone (at least as much)."""

    chars: int
    tokens: int
    reply_bytes: int
    chars_alone: int
    tokens_alone: int
    reply_bytes_alone: int


class Admitted(Protocol):
    """What admission reads and writes on a request's state."""

    error: object

    @property
    def ready(self) -> bool: ...


def largest_valid_request(settings: Settings, max_seq_length: int) -> tuple[int, int]:
    """(characters, tokens) of the largest request the request limits let through."""
    return (settings.max_pairs_per_request * 2 * settings.max_chars_per_text,
            settings.max_pairs_per_request * max_seq_length)


class BudgetKeeper:
    """The batch budgets of one worker: configured, or measured with a floor and measured again when they refuse."""

    def __init__(self, encoder: InstructorEncoder, settings: Settings, response_timeout_s: float,
                 largest_reply_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._encoder, self._settings, self._timeout = encoder, settings, response_timeout_s
        self._clock = clock
        self._floor_chars, self._floor_tokens = largest_valid_request(settings, encoder.max_seq_length)
        self._largest_reply = largest_reply_bytes
        self._measured = settings.max_batch_request_chars is None or settings.max_batch_request_tokens is None
        self.budgets = self._budgets(settings.max_batch_request_chars or 0, settings.max_batch_request_tokens or 0)
        self.measured_at: float | None = None  # None: every budget is configured, nothing to measure
        self.measure()

    def measure(self) -> Budgets:
        """Measure the budgets that are not configured; a new measurement never lowers one."""
        if self._measured:
            chars, tokens = self.budgets.chars, self.budgets.tokens
            if self._settings.max_batch_request_chars is None:
                chars = max(chars, self._checked(self._measured_chars(), self._floor_chars, "characters",
                                                 "max_chars_per_text"))
            if self._settings.max_batch_request_tokens is None:
                tokens = max(tokens, self._checked(self._measured_tokens(), self._floor_tokens, "tokens",
                                                   "max_seq_length"))
            self.budgets = self._budgets(chars, tokens)
            self.measured_at = self._clock()
        log.info("budget per dynamic batch: %d characters, %d tokens, %d reply bytes (a request alone: %d, %d, "
                 "%d)", *dataclasses.astuple(self.budgets))
        return self.budgets

    def _budgets(self, chars: int, tokens: int) -> Budgets:
        settings = self._settings
        return Budgets(
            chars, tokens, settings.max_batch_reply_bytes,
            chars if settings.max_batch_request_chars else max(chars, self._floor_chars),
            tokens if settings.max_batch_request_tokens else max(tokens, self._floor_tokens),
            max(settings.max_batch_reply_bytes, self._largest_reply),
        )

    def _checked(self, measured: int, floor: int, unit: str, setting: str) -> int:
        if measured < floor:
            log.warning(
                "this worker measured %d %s per dynamic batch, less than the largest valid request's %d: such a "
                "request is still taken alone and may run past responseTimeout on this device (measured while the "
                "machine was busy, or a slow device: lower max_pairs_per_request or %s, or raise responseTimeout)",
                measured, unit, floor, setting)
        return measured

    def after_refusals(self, refused: bool) -> None:
        """A batch refused requests for want of budget: measure again, at most every REMEASURE_EVERY_S."""
        if refused and self.measured_at is not None and self._clock() - self.measured_at >= REMEASURE_EVERY_S:
            self.measure()

    def _measured_chars(self) -> int:
        """Characters this worker surely tokenizes in its share of responseTimeout (worst-case text, one thread)."""
        seconds_per_char = min(self._encoder.tokenizer_seconds_per_char() for _ in range(_PROBES))
        return int(self._timeout * TOKENIZE_SHARE_OF_TIMEOUT / max(seconds_per_char * PREFIX_ROUNDS_OVERHEAD, 1e-9))

    def _measured_tokens(self) -> int:
        """Tokens this device embeds in its share of responseTimeout, timed on a small batch (best of several).

        A small batch is slower per token than a full one, so the estimate errs towards refusing too early."""
        pairs = [("Represent the sentence:", "budget probe " * n) for n in (4, 16, 64, 128)]
        runs = [self._encoder.encode(pairs).stats for _ in range(_PROBES)]
        log.info("budget probe: %s", ", ".join(f"{s.tokens} tokens in {s.seconds * 1000:.1f} ms" for s in runs))
        tokens_per_s = max(stats.tokens / max(stats.seconds, 1e-6) for stats in runs)
        return int(tokens_per_s * self._timeout * EMBED_SHARE_OF_TIMEOUT)


def admit(states: Sequence[Admitted], unit: str, cost: Callable[[Admitted], int], budget: int, alone: int,
          setting: str, used: int = 0) -> tuple[int, bool]:
    """Keep the batch under ``budget``, ``used`` of it taken already: the first request admitted may carry up to
    ``alone``, and gets 413 beyond it; a later one that does not fit beside the earlier ones gets 503.
    Returns (used now, whether any request got 503)."""
    refused = False
    for state in states:
        if not state.ready:
            continue
        needed = cost(state)
        if needed > alone:
            state.error = PayloadTooLarge(
                f"the request has {needed} {unit}; this server takes at most {alone} {unit} per request "
                f"(setting {setting}): split the request"
            )
        elif used > 0 and used + needed > budget:
            refused = True
            state.error = Overloaded(
                f"the server is busy: this batch already carries {used} of its {budget} {unit} "
                f"(setting {setting}); retry the request"
            )
        else:
            used += needed
    return used, refused
