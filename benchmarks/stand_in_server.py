"""A stand-in for a served model on 127.0.0.1: answers ``POST /predictions/<name>`` with valid vectors, fast.

For measuring the client alone (its memory, its throughput ceiling) and for testing it against behaviour
TorchServe cannot be made to show on demand (a full queue, a missing token header). It speaks the native
body (``inputs`` as pairs, ``truncate``, ``encoding_format`` float | base64) and answers:

- 200 with one unit vector per pair, deterministic per pair (the same pair always gets the same vector),
  ``--dim`` floats, as JSON numbers or base64 float32, and ``X-Instructor-Tokens`` (whitespace-separated
  words + 1 per pair; off with ``--no-tokens``);
- 413 PayloadTooLarge naming the pair for a text over ``--max-chars`` characters, as the handler does;
- 413 naming no pair for a request of more than ``max_request_pairs`` pairs (the handler's per-request
  token budget), if set;
- 503 when more than ``--capacity`` requests are in flight (TorchServe's full queue), if set;
- the handler's 503 "Overloaded" (its dynamic batch is full: retry at once) to the first ``batch_full``
  requests, if set;
- 500 to every request after the first ``fail_after`` (a handler bug: the client stops), if set;
- 400 to a body with ``encoding_format`` when ``knows_encoding_format`` is off (an older server);
- each answer after ``latency`` seconds (a model's compute time), so that requests overlap.
``seed`` picks the vectors: two seeds are two different "models".

    python -m benchmarks.stand_in_server --port 8090 --dim 384
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

TOKENS_HEADER = "X-Instructor-Tokens"
N_BASIS = 4096  # distinct vectors: a pair's vector is basis[crc32(pair) % N_BASIS]


@dataclass
class Behaviour:
    dim: int = 384
    max_chars: int = 20_000
    capacity: int | None = None  # requests in flight before 503; None: no limit
    tokens: bool = True
    seed: int = 0
    fail_after: int | None = None  # requests answered before every later one gets a 500
    max_request_pairs: int | None = None  # more pairs in one request: 413 naming no pair
    batch_full: int = 0  # answer the first N requests with the handler's 503 "Overloaded" (batch full)
    knows_encoding_format: bool = True  # False: a server that predates the field answers 400 to it
    latency: float = 0.0  # seconds each answer takes (a model's compute time), for requests to overlap
    counters: dict[str, int] = field(default_factory=lambda: {"requests": 0, "pairs": 0, "413": 0, "503": 0,
                                                                      "max_in_flight": 0})


def basis(dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((N_BASIS, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def vector_of(table: np.ndarray, instruction: str, text: str) -> np.ndarray:
    """The stand-in's vector of a pair (what a test compares the client's output with)."""
    return table[zlib.crc32(f"{instruction}\x00{text}".encode("utf-8", "surrogatepass")) % N_BASIS]


def make_handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    table = basis(behaviour.dim, behaviour.seed)
    lock = threading.Lock()
    state = {"in_flight": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                state["in_flight"] += 1
                busy = behaviour.capacity is not None and state["in_flight"] > behaviour.capacity
                counters = behaviour.counters
                broken = behaviour.fail_after is not None and counters["requests"] >= behaviour.fail_after
                full = counters["requests"] < behaviour.batch_full
                counters["requests"] += 1
                counters["max_in_flight"] = max(counters["max_in_flight"], state["in_flight"])
                counters["503"] += busy
            try:
                if broken:
                    self._answer(500, {"code": 500, "type": "InternalError", "message": "stand-in failure"})
                elif full:
                    self._answer(503, {"code": 503, "type": "Overloaded", "message": "the server is busy: this "
                                       "batch already carries its tokens; retry the request"})
                elif busy:
                    self._answer(503, {"code": 503, "type": "ServiceUnavailableException",
                                       "message": "Model is overloaded, please try again later."})
                else:
                    time.sleep(behaviour.latency)
                    self._embed(body)
            finally:
                with lock:
                    state["in_flight"] -= 1

        def _embed(self, body: bytes) -> None:
            request = json.loads(body)
            pairs = request["inputs"]
            if "encoding_format" in request and not behaviour.knows_encoding_format:
                self._answer(400, {"code": 400, "type": "InvalidInput", "message": "unknown field 'encoding_format'"})
                return
            if behaviour.max_request_pairs is not None and len(pairs) > behaviour.max_request_pairs:
                with lock:
                    behaviour.counters["413"] += 1
                self._answer(413, {"code": 413, "type": "PayloadTooLarge", "message":
                                   f"the request has {len(pairs) * 100} tokens; this server takes at most "
                                   f"{behaviour.max_request_pairs * 100} tokens per request: split the request"})
                return
            for index, (_, text) in enumerate(pairs):
                if len(text) > behaviour.max_chars:
                    self._answer(413, {"code": 413, "type": "PayloadTooLarge", "message":
                                       f"inputs[{index}][1] (sentence) is {len(text)} characters; "
                                       f"the limit is max_chars_per_text = {behaviour.max_chars}"})
                    return
            vectors = np.stack([vector_of(table, i, t) for i, t in pairs]) if pairs else np.zeros((0, behaviour.dim))
            if request.get("encoding_format") == "base64":
                data: object = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
            else:
                data = vectors.tolist()
            headers = {}
            if behaviour.tokens:
                headers[TOKENS_HEADER] = str(sum(len(f"{i} {t}".split()) + 1 for i, t in pairs))
            with lock:
                behaviour.counters["pairs"] += len(pairs)
            self._answer(200, data, headers)

        def _answer(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def stand_in_server(behaviour: Behaviour | None = None, port: int = 0) -> Iterator[str]:
    """Serve on 127.0.0.1 in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(behaviour or Behaviour()))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8090, help="port on 127.0.0.1 (default: 8090)")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (default: 384)")
    parser.add_argument("--capacity", type=int, default=None, help="requests in flight before 503 (default: none)")
    parser.add_argument("--no-tokens", action="store_true", help=f"do not send {TOKENS_HEADER}")
    args = parser.parse_args(argv)
    behaviour = Behaviour(dim=args.dim, capacity=args.capacity, tokens=not args.no_tokens)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(behaviour))
    server.daemon_threads = True
    print(f"stand-in server on http://127.0.0.1:{args.port} ({args.dim}-d)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
