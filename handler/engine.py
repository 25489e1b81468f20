"""The device engine: one process that holds a model on one device for every TorchServe worker of that model.

Why: TorchServe hands each worker its own dynamic batches, so N workers sharing a GPU each run small batches
in their own CUDA context, and the GPU time-slices between them (measured: ~250 us of GPU a pair against
~164 us in bulk, 78% busy at most). With the engine, workers parse, tokenize and render (the CPU work, in
parallel), and send token ids here; the engine merges whatever all workers have queued into one plan of
micro-batches and keeps two such steps on the device at once, so the GPU sees bulk-sized work from one
context, and holds one copy of the weights. Measured (benchmarks/NOTES.md, run 6): one copy of the weights
indeed, but fewer pairs/s than a model per worker, because this process's one thread launches every step
(sampled: 65-85% of the loop launching); the StepLog lines in its log say where its time goes.

  python -m handler.engine --model-dir DIR --device cuda:0 --socket PATH [--settings JSON]

A worker starts it when it finds none (handler/engine_client.py); it exits a few seconds after its last
worker has gone. One job that fails fails alone: a merged step that raises is done again job by job.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import torch

from handler.encoder import Embeddings, EncodeStats, InstructorEncoder, PendingEmbeddings, TokenizedPair
from handler.engine_wire import ConnectionClosed, Job, WireError, parse_job, receive_message, reply_parts, send_message
from handler.errors import InternalError, ServiceError
from handler.settings import Settings

log = logging.getLogger("handler.engine")

# One step merges the queued jobs up to this many micro-batches' worth of tokens: bulk-sized for the device,
# short enough that a lone small request behind it waits little.
STEP_MICRO_BATCHES = 4
DEFAULT_IDLE_EXIT_S = 5.0


class Peer:
    """One worker's connection: replies are sent whole, one at a time."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock, self.number = sock, number
        self._send_lock = threading.Lock()
        self.alive = True

    def send(self, parts: list) -> None:
        if not self.alive:
            return  # its worker is gone: nobody waits for this reply
        try:
            with self._send_lock:
                send_message(self.sock, *parts)
        except OSError:
            self.alive = False


class JobQueue:
    """Jobs of every worker in arrival order; ``take`` drains up to a token budget."""

    def __init__(self) -> None:
        self._jobs: collections.deque[tuple[Peer, Job]] = collections.deque()
        self._ready = threading.Condition()

    def put(self, peer: Peer, job: Job) -> None:
        with self._ready:
            self._jobs.append((peer, job))
            self._ready.notify()

    def take(self, max_tokens: int, wait_s: float) -> list[tuple[Peer, Job]]:
        """Queued jobs (at least the first, whatever its size) up to ``max_tokens``; waits up to ``wait_s``
        for one when there are none (0: do not wait)."""
        with self._ready:
            if not self._jobs and wait_s > 0:
                self._ready.wait(wait_s)
            taken: list[tuple[Peer, Job]] = []
            tokens = 0
            while self._jobs and (not taken or tokens + self._jobs[0][1].tokens <= max_tokens):
                peer, job = self._jobs.popleft()
                taken.append((peer, job))
                tokens += job.tokens
            return taken


class StepLog:
    """What the device loop did, logged every ``every_s``: how large its steps were and where its thread's
    time went (waiting for jobs, launching steps, waiting for results and sending them), to tell a
    device-bound engine from one bound by its own thread."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.since, self.steps, self.pairs, self.tokens = now, 0, 0, 0
        self.waiting_s = self.launching_s = self.finishing_s = 0.0

    def add(self, step: list[tuple[Peer, Job]], waiting_s: float, launching_s: float, finishing_s: float) -> None:
        self.waiting_s += waiting_s
        self.launching_s += launching_s
        self.finishing_s += finishing_s
        if step:
            self.steps += 1
            self.pairs += sum(job.lengths.shape[0] for _, job in step)
            self.tokens += sum(job.tokens for _, job in step)
        now = time.perf_counter()
        if now - self.since < self.every_s:
            return
        if self.steps:
            wall = now - self.since
            log.info("%d steps in %.1f s: %.1f pairs (%.0f tokens) a step, %.0f pairs/s; the loop's time: "
                     "%.0f%% waiting for jobs, %.0f%% launching, %.0f%% waiting for results and replying",
                     self.steps, wall, self.pairs / self.steps, self.tokens / self.steps, self.pairs / wall,
                     100 * self.waiting_s / wall, 100 * self.launching_s / wall, 100 * self.finishing_s / wall)
        self._reset(now)


class Engine:
    """Serves jobs from the workers connected on ``listener`` with ``encoder`` until idle for ``idle_exit_s``."""

    def __init__(self, encoder: InstructorEncoder, listener: socket.socket, idle_exit_s: float,
                 on_idle_exit: contextlib.AbstractContextManager | None = None,
                 release: Callable[[], None] = lambda: None) -> None:
        self.encoder, self.listener, self.idle_exit_s = encoder, listener, idle_exit_s
        self._release = release  # removes the socket's name: done under the exit guard
        self._exit_guard = on_idle_exit or contextlib.nullcontext()
        self.queue = JobQueue()
        self._peers: set[Peer] = set()
        self._peers_lock = threading.Lock()
        self._idle_since = time.monotonic()
        self._stopping = threading.Event()
        self._vocabulary = encoder.vocabulary_size
        self._step_tokens = STEP_MICRO_BATCHES * encoder.settings.max_batch_tokens
        self.hello = orjson.dumps({"dimension": encoder.dimension, "max_seq_length": encoder.max_seq_length,
                                   "precision": encoder.precision.value, "device": str(encoder.device),
                                   "pid": os.getpid()})

    # ---- connections --------------------------------------------------------------------------------

    def accept_forever(self) -> None:
        number = 0
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: the engine is stopping
            number += 1
            peer = Peer(sock, number)
            with self._peers_lock:
                self._peers.add(peer)
            threading.Thread(target=self._read, args=(peer,), name=f"peer-{number}", daemon=True).start()

    def _read(self, peer: Peer) -> None:
        try:
            send_message(peer.sock, self.hello)
            while True:
                job = parse_job(receive_message(peer.sock))
                problem = self._check(job)
                if problem is not None:
                    log.error("worker %d sent job %d that cannot be embedded: %s", peer.number, job.job_id, problem)
                    refusal = InternalError(f"the device engine refused the job: {problem}")
                    peer.send(reply_parts(job.job_id, _error_header(refusal)))
                    continue
                self.queue.put(peer, job)
        except ConnectionClosed:
            pass  # its worker stopped or died
        except WireError as error:
            log.warning("worker %d: %s; closing its connection", peer.number, error)
        except OSError:
            pass
        finally:
            peer.alive = False
            with contextlib.suppress(OSError):
                peer.sock.close()
            with self._peers_lock:
                self._peers.discard(peer)
                if not self._peers:
                    self._idle_since = time.monotonic()

    def _check(self, job: Job) -> str | None:
        """Token ids out of the vocabulary would fail on the device for everyone (a CUDA assert): refuse them."""
        if job.lengths.shape[0] == 0:
            return "no pairs"
        if job.lengths.min() < 1 or job.lengths.max() > self.encoder.max_seq_length:
            return f"a pair length outside 1..{self.encoder.max_seq_length}"
        if job.pool_starts.min() < 0 or (job.pool_starts >= job.lengths).any():
            return "a pool start outside its pair"
        if job.ids.shape[0] and (job.ids.min() < 0 or job.ids.max() >= self._vocabulary):
            return f"a token id outside 0..{self._vocabulary - 1}"
        return None

    # ---- the device loop --------------------------------------------------------------------------------

    def serve(self) -> None:
        """Merge queued jobs into steps and keep up to two steps on the device; return once idle too long."""
        threading.Thread(target=self.accept_forever, name="accept", daemon=True).start()
        in_flight: collections.deque[tuple[list[tuple[Peer, Job]], PendingEmbeddings | None]] = collections.deque()
        activity = StepLog()
        while True:
            started = time.perf_counter()
            step = self.queue.take(self._step_tokens, wait_s=0 if in_flight else 0.5)
            taken = time.perf_counter()
            if step:
                in_flight.append((step, self._launch(step)))
            launched = time.perf_counter()
            if in_flight and (not step or len(in_flight) >= 2):
                self._finish(*in_flight.popleft())
            elif not in_flight and self._idle_for_long() and self._stop_if_idle():
                return
            activity.add(step, taken - started, launched - taken, time.perf_counter() - launched)

    def _launch(self, step: list[tuple[Peer, Job]]) -> PendingEmbeddings | None:
        try:
            return self.encoder.launch([item for _, job in step for item in _items(job)])
        except Exception:
            log.warning("a step of %d jobs failed; retrying job by job", len(step), exc_info=True)
            return None

    def _finish(self, step: list[tuple[Peer, Job]], pending: PendingEmbeddings | None) -> None:
        result: Embeddings | None = None
        if pending is not None:
            try:
                result = pending.result()
            except Exception:
                log.warning("a step of %d jobs failed; retrying job by job", len(step), exc_info=True)
        if result is None:
            for peer, job in step:
                self._embed_alone(peer, job)
            return
        stats, total = result.stats, max(1, result.stats.tokens)
        offset = 0
        for peer, job in step:
            count = job.lengths.shape[0]
            # The step's figures, items, tokens and padding by this job's share.
            share = dataclasses.replace(stats, items=count, tokens=job.tokens,
                                        padded_tokens=round(stats.padded_tokens * job.tokens / total))
            peer.send(reply_parts(job.job_id, _stats_header(share), result.vectors[offset:offset + count]))
            offset += count

    def _embed_alone(self, peer: Peer, job: Job) -> None:
        try:
            result = self.encoder.embed(_items(job))
        except ServiceError as error:
            peer.send(reply_parts(job.job_id, _error_header(error)))
        except Exception:
            log.exception("job %d of worker %d failed", job.job_id, peer.number)
            peer.send(reply_parts(job.job_id, _error_header(InternalError("the device engine failed on this "
                                                                           "request; its log has details"))))
        else:
            peer.send(reply_parts(job.job_id, _stats_header(result.stats), result.vectors))

    # ---- exit ------------------------------------------------------------------------------------------

    def _idle_for_long(self) -> bool:
        with self._peers_lock:
            return not self._peers and time.monotonic() - self._idle_since >= self.idle_exit_s

    def _stop_if_idle(self) -> bool:
        """Close the listener unless a worker connected meanwhile; under the start lock, so that a worker
        never finds a socket that is about to go away and never starts a second engine beside this one."""
        with self._exit_guard:
            with self._peers_lock:
                if self._peers:
                    return False
                self._stopping.set()
            with contextlib.suppress(OSError):
                self.listener.close()
            self._release()
            return True

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()


def _items(job: Job) -> list[TokenizedPair]:
    ends = np.cumsum(job.lengths)
    ids = job.ids.tolist()
    return [TokenizedPair(ids[end - length:end], start, False)
            for end, length, start in zip(ends.tolist(), job.lengths.tolist(), job.pool_starts.tolist(), strict=True)]


def _stats_header(stats: EncodeStats) -> dict:
    return {"stats": dataclasses.asdict(stats)}


def _error_header(error: ServiceError) -> dict:
    return {"error": {"status": error.status, "type": error.type, "message": error.message}}


def main(argv: list[str] | None = None) -> int:
    from handler.engine_client import engine_files, start_lock  # the same names and lock the workers use

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="the model directory (archive's model/)")
    parser.add_argument("--device", required=True, help="cuda:N or cpu")
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    parser.add_argument("--settings", default="{}", help="the workers' settings as JSON (default: {})")
    parser.add_argument("--idle-exit-s", type=float, default=DEFAULT_IDLE_EXIT_S,
                        help=f"exit this long after the last worker left (default: {DEFAULT_IDLE_EXIT_S})")
    args = parser.parse_args(argv)
    # scripts/stop.sh ends a server's engines with SIGTERM: leave through ``finally`` (socket and pid files).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s engine[%(process)d] %(levelname)s %(message)s")
    torch.set_float32_matmul_precision("highest")  # float32 stays 1.0.1-exact (see torchserve_handler.py)
    settings = Settings.from_sources(orjson.loads(args.settings), environ={})
    files = engine_files(args.socket)
    # The pid file first: a worker that finds this engine still loading waits for it instead of starting another.
    files.pid.write_text(str(os.getpid()))
    encoder = InstructorEncoder(args.model_dir, settings, args.device)
    if settings.warmup:
        log.info("warm-up took %.2f s", encoder.warmup())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        args.socket.unlink()  # a socket file left by an engine that died: nothing listens on it
    listener.bind(str(args.socket))
    os.chmod(args.socket, 0o600)  # only this user's workers
    bound = args.socket.stat().st_ino
    listener.listen(64)

    def release() -> None:
        """Remove the socket and pid files if they are still this engine's (a successor may own the names)."""
        with contextlib.suppress(OSError):
            if args.socket.stat().st_ino == bound:
                args.socket.unlink()
        with contextlib.suppress(OSError):
            if files.pid.read_text().strip() == str(os.getpid()):
                files.pid.unlink()

    engine = Engine(encoder, listener, args.idle_exit_s, start_lock(files.lock), release)
    log.info("serving %s on %s for the workers at %s", args.model_dir, encoder.device, args.socket)
    try:
        engine.serve()
    finally:
        engine.stop()
        release()
    log.info("no worker for %.0f s: exiting", args.idle_exit_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
