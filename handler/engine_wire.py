"""The messages between a worker and its device engine (handler/engine.py), over a Unix socket, and where
engines live (what the workers and scripts/launcher, which imports no torch, both need).

Every message is a 4-byte little-endian length, then that many bytes. Arrays travel as raw little-endian
bytes (numpy), never pickled: a socket peer can only send numbers and one small JSON header.

  hello (engine -> worker, once)   JSON: dimension, max_seq_length, precision, device, pid
  job (worker -> engine)           u64 job id, u32 pairs, then int32 lengths[n], pool starts[n], token ids
  reply (engine -> worker)         u64 job id, u32 header bytes, JSON header, then float32 vectors (n x dim)
                                   the header is {"stats": {...}} or {"error": {"status", "type", "message"}}
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# Engines of a server live in this folder of its temp directory: sockets, pid files, logs (scripts/launcher stops
# the engines it finds there).
ENGINE_FOLDER = "instructor-engines"
_LENGTH = struct.Struct("<I")
_JOB_HEAD = struct.Struct("<QI")
_REPLY_HEAD = struct.Struct("<QI")
# A job is at most a dynamic batch's chunk of a few hundred pairs; anything near this is a broken peer.
MAX_MESSAGE_BYTES = 256 * 2**20


def running_engine(pid_file: Path) -> int | None:
    """The pid an engine's pid file names, if that process is still an engine (loading or serving); else None."""
    try:
        pid = int(pid_file.read_text().strip())
        return pid if b"handler.engine" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


class WireError(Exception):
    """A message that breaks the format: the connection is no longer usable."""


class ConnectionClosed(WireError):
    """The peer closed the connection (between messages or in the middle of one)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """Tokenized pairs to embed: the token ids of all pairs in one stream, cut by ``lengths``."""

    job_id: int
    lengths: np.ndarray  # int32 (n,)
    pool_starts: np.ndarray  # int32 (n,)
    ids: np.ndarray  # int32 (sum of lengths,)

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass(frozen=True)
class Reply:
    job_id: int
    header: dict[str, Any]
    vectors: np.ndarray | None  # float32 (n, dimension) when the header has no "error"


def send_message(sock: socket.socket, *parts: bytes | memoryview) -> None:
    """One message made of ``parts`` (sent without joining them: vectors can be megabytes)."""
    size = sum(len(part) for part in parts)
    sock.sendall(_LENGTH.pack(size))
    for part in parts:
        sock.sendall(part)


def receive_message(sock: socket.socket) -> bytearray:
    size = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))[0]
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    return _receive_exactly(sock, size)


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise ConnectionClosed("the peer closed the connection")
        received += count
    return buffer


def job_parts(job_id: int, input_ids: list[list[int]], pool_starts: list[int]) -> list[bytes]:
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype="<i4", count=len(input_ids))
    stream = np.fromiter((token for ids in input_ids for token in ids), dtype="<i4", count=int(lengths.sum()))
    return [_JOB_HEAD.pack(job_id, len(input_ids)), lengths.tobytes(),
            np.asarray(pool_starts, dtype="<i4").tobytes(), stream.tobytes()]


def parse_job(message: bytearray) -> Job:
    if len(message) < _JOB_HEAD.size:
        raise WireError("job message shorter than its header")
    job_id, count = _JOB_HEAD.unpack_from(message)
    arrays = np.frombuffer(message, dtype="<i4", offset=_JOB_HEAD.size) if len(message) > _JOB_HEAD.size \
        else np.empty(0, dtype="<i4")
    if (len(message) - _JOB_HEAD.size) % 4 or arrays.shape[0] < 2 * count:
        raise WireError(f"job {job_id}: {len(message)} bytes cannot hold {count} pairs")
    lengths, pool_starts, ids = arrays[:count], arrays[count:2 * count], arrays[2 * count:]
    if (lengths < 0).any() or int(lengths.sum(dtype=np.int64)) != ids.shape[0]:
        raise WireError(f"job {job_id}: the lengths do not add up to the {ids.shape[0]} token ids sent")
    return Job(job_id, lengths, pool_starts, ids)


def reply_parts(job_id: int, header: dict[str, Any], vectors: np.ndarray | None = None) -> list[bytes | memoryview]:
    head = orjson.dumps(header)
    parts: list[bytes | memoryview] = [_REPLY_HEAD.pack(job_id, len(head)), head]
    if vectors is not None:
        parts.append(memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B"))
    return parts


def parse_reply(message: bytearray, dimension: int) -> Reply:
    if len(message) < _REPLY_HEAD.size:
        raise WireError("reply shorter than its header")
    job_id, head_size = _REPLY_HEAD.unpack_from(message)
    start = _REPLY_HEAD.size + head_size
    header = orjson.loads(bytes(message[_REPLY_HEAD.size:start]))
    if "error" in header:
        return Reply(job_id, header, None)
    body = len(message) - start
    if body % (4 * dimension):
        raise WireError(f"reply to job {job_id}: {body} bytes of vectors are not rows of {dimension} floats")
    vectors = np.frombuffer(message, dtype="<f4", offset=start).reshape(-1, dimension)
    return Reply(job_id, header, vectors)
