"""The embedding core: [instruction, text] pairs in, float32 vectors out, InstructorEmbedding-1.0.1-exact.

Knows nothing of TorchServe. What 1.0.1 computes for a pair (see docs/compatibility.md):
  joined = (instruction + text.strip()).strip()     # no separator; lower-cased if do_lower_case
  k      = tokens(instruction.strip()) - 1          # the trailing </s> is not part of the instruction
  k      = 0 if k <= 1                              # a one-token instruction is not masked
The encoder attends over ALL tokens of ``joined``; pooling skips the first k positions of each row;
then the Dense head and L2 normalisation. k is per row, so one batch can mix any instructions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from handler.acceleration import accelerate
from handler.batching import packed_plan, padded_slots, plan_micro_batches
from handler.chunks import FIRST_CHUNK_PAIRS, chunk_offsets
from handler.errors import InsufficientMemory, NothingToEmbed
from handler.lookahead import ahead
from handler.model_directory import ModelDirectory, load_dense_layers, read_model_directory
from handler.settings import InstructionMode, Precision, Settings, SettingsError
from handler.tokenization import BoundedTokenizer

log = logging.getLogger(__name__)

Pair = tuple[str, str]
_INSTRUCTION_CACHE_SIZE = 4096
# What one extra micro-batch costs, in padded-token slots (launch + host overhead), where the setting
# micro_batch_overhead_tokens is not given; tunes the planner.
DEFAULT_OVERHEAD_TOKENS = {"cuda": 512, "cpu": 32}


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    """One pair after tokenization: what the encoder will see."""

    input_ids: list[int]  # after truncation to max_seq_length, special tokens included
    pool_start: int  # k: positions before this one are excluded from pooling
    truncated: bool  # the pair had more than max_seq_length tokens

    @property
    def pooled_tokens(self) -> int:
        """Positions the vector is averaged over; 0 when the instruction covers the whole joined text."""
        return len(self.input_ids) - self.pool_start


@dataclasses.dataclass
class EncodeStats:
    """What one ``embed`` call did, for metrics and benchmarks."""

    items: int = 0
    tokens: int = 0  # real tokens fed to the encoder
    padded_tokens: int = 0  # rows x padded length, summed over micro-batches
    micro_batches: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    @property
    def padding_ratio(self) -> float:
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.tokens / self.padded_tokens

    def add(self, other: EncodeStats) -> None:
        """Fold another call's figures into these (seconds add up: calls that overlap count twice)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """The one result type of the core: vectors of tokenized pairs, in the order they were given."""

    vectors: np.ndarray  # float32, shape (n, dimension), input order
    items: list[TokenizedPair]
    stats: EncodeStats

    @property
    def token_counts(self) -> list[int]:
        """Tokens embedded per pair (after truncation, special tokens included)."""
        return [len(item.input_ids) for item in self.items]

    @property
    def truncated(self) -> list[bool]:
        return [item.truncated for item in self.items]


class PendingEmbeddings:
    """Micro-batches queued on the device, their vectors on their way to host memory; ``result()`` waits."""

    def __init__(self, items: list[TokenizedPair], rows: list[int], vectors: torch.Tensor | None,
                 dimension: int, stats: EncodeStats, started: float) -> None:
        self._items, self._rows, self._stats, self._started = items, rows, stats, started
        self._dimension = dimension
        self._host: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None
        if vectors is not None and vectors.device.type == "cuda":
            # Copy into pinned memory without waiting: the caller queues more work (or renders earlier
            # replies) while the device finishes; the event says when these bytes are there.
            self._host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            self._host.copy_(vectors, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(vectors.device))
        elif vectors is not None:
            self._host = vectors

    def result(self) -> Embeddings:
        out = np.empty((len(self._items), self._dimension), dtype=np.float32)
        if self._host is not None:
            if self._done is not None:
                self._done.synchronize()
            out[self._rows] = self._host.numpy()
        self._stats.seconds = time.perf_counter() - self._started
        return Embeddings(out, self._items, self._stats)


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; refuse combinations that cannot work."""
    if precision is Precision.AUTO:
        return Precision.BFLOAT16 if device.type == "cuda" else Precision.FLOAT32
    if precision is Precision.INT8 and device.type != "cpu":
        raise SettingsError("setting 'precision': int8 (dynamic quantization) runs on CPU only")
    return precision


class InstructorEncoder:
    """A loaded model plus its tokenizer; thread-compatible, not thread-safe."""

    def __init__(self, model_dir: str | Path, settings: Settings | None = None,
                 device: str | torch.device = "cpu") -> None:
        self._prepare(model_dir, settings, device)
        started = time.perf_counter()
        self._model, self.pad_token_id = _load_transformer(self.files, self.precision, self.device)
        self._accelerated = accelerate(self._model, self.device, self.precision, self.settings)  # None: CPU, fp32, int8
        if self._accelerated is not None and self.settings.packed_stream and self.files.pooling_mode == "mean":
            self._accelerated.enable_stream(self._model, self.max_seq_length, self.settings.max_batch_rows,
                                            self.settings.max_batch_tokens)
        self._dense = torch.nn.Sequential(*load_dense_layers(self.files)).to(self.device).eval()
        self.dimension = self._infer_dimension()
        log.info(
            "loaded %s (%s, %s, mode=%s, max_seq_length=%d, dim=%d) on %s in %.1f s",
            self.files.root, self.files.model_type, self.precision.value, self.mode.value,
            self.max_seq_length, self.dimension, self.device, time.perf_counter() - started,
        )

    def _prepare(self, model_dir: str | Path, settings: Settings | None, device: str | torch.device) -> None:
        """Everything but the model: settings, model files, precision, mode, tokenizer (a subclass that
        embeds elsewhere, handler/engine_client.py, stops here)."""
        self.settings = settings or Settings()
        self.device = torch.device(device)
        self.files: ModelDirectory = read_model_directory(model_dir)
        self.precision = resolve_precision(self.settings.precision, self.device)
        self.mode = self._resolve_mode(self.settings.instruction_mode)
        self.max_seq_length = self.settings.max_seq_length or self.files.max_seq_length or 512
        self.settings.check_fits(self.max_seq_length)  # the model's own value may exceed the budget
        self._tokenizer = BoundedTokenizer(self.files.tokenizer_file, self.max_seq_length)
        self._instruction_lengths: dict[str, int] = {}
        self._accelerated = None

    @property
    def streams(self) -> bool:
        """Whether micro-batches run as packed token streams (handler/acceleration.py)."""
        return self._accelerated is not None and self._accelerated.streams

    @property
    def overhead_tokens(self) -> int:
        """The planner's price of one more micro-batch, in token slots."""
        if self.settings.micro_batch_overhead_tokens is not None:
            return self.settings.micro_batch_overhead_tokens
        return DEFAULT_OVERHEAD_TOKENS.get(self.device.type, 0)

    @property
    def vocabulary_size(self) -> int:
        """Rows of the input embedding: every token id must be below it."""
        return int(self._model.get_input_embeddings().num_embeddings)

    # ---- tokenization -------------------------------------------------------------------------

    def tokenize(self, pairs: Sequence[Pair]) -> list[TokenizedPair]:
        """Join and tokenize pairs exactly like 1.0.1 (or as a sentence-transformers prompt).

        Each joined text is tokenized once, and never further than its first max_seq_length tokens
        (handler/tokenization.py), so the cost of a pair is bounded whatever its length in characters.
        """
        joined = [self._join(instruction, text) for instruction, text in pairs]
        encoded = self._tokenizer.encode(joined)
        if self.mode is InstructionMode.INSTRUCTOR:
            starts = self._pool_starts([instruction for instruction, _ in pairs])
        else:
            starts = [0] * len(pairs)
        return [TokenizedPair(ids, start, truncated) for (ids, truncated), start in zip(encoded, starts, strict=True)]

    def tokenizer_seconds_per_char(self) -> float:
        """Worst-case tokenization time per character (a text that must be tokenized whole), one thread."""
        return self._tokenizer.seconds_per_char()

    def _join(self, instruction: str, text: str) -> str:
        if self.mode is InstructionMode.INSTRUCTOR:
            joined = (instruction + text.strip()).strip()
        else:  # sentence-transformers: prompt + sentence, stripped by its Transformer.tokenize
            joined = (instruction + text).strip()
        return joined.lower() if self.files.do_lower_case else joined

    def _pool_starts(self, instructions: Sequence[str]) -> list[int]:
        cleaned = [i.strip().lower() if self.files.do_lower_case else i.strip() for i in instructions]
        # This call's lengths come from a dict of its own: the shared cache may be cleared (by this call, or
        # by a look-ahead thread's) between filling it and reading it, and a miss would fail the batch.
        lengths = {text: self._instruction_lengths.get(text) for text in set(cleaned) if text}
        missing = sorted(text for text, length in lengths.items() if length is None)
        if missing:
            for text, (ids, _) in zip(missing, self._tokenizer.encode(missing), strict=True):
                lengths[text] = len(ids)
            if len(self._instruction_lengths) + len(missing) > _INSTRUCTION_CACHE_SIZE:
                self._instruction_lengths = {}  # bounded memory under many distinct instructions
            self._instruction_lengths.update((text, lengths[text]) for text in missing)
        starts = []
        for text in cleaned:
            # 1.0.1 tokenizes the instruction with the same truncation, then drops the </s>.
            k = lengths[text] - 1 if text else 0
            starts.append(0 if k <= 1 else k)
        return starts

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, pairs: Sequence[Pair], chunk_pairs: int = 2048) -> Embeddings:
        """Tokenize and embed; vectors come back in input order.

        The one encoding path, also the one the serving adapter takes chunk by chunk: ``tokenize``, the
        ``unpoolable`` check, ``launch``, ``PendingEmbeddings.result``. Chunks after the first are tokenized
        on a helper thread (the tokenizer releases the GIL) while this thread queues the previous chunk's
        micro-batches on the accelerator. Raises NothingToEmbed for a pair whose instruction covers its whole
        text, numbered in ``pairs``.
        """
        started = time.perf_counter()
        spans = chunk_offsets(len(pairs), chunk_pairs, min(chunk_pairs, FIRST_CHUNK_PAIRS))
        launched: list[PendingEmbeddings] = []
        with contextlib.closing(ahead(self.tokenize, [pairs[start:end] for start, end in spans])) as chunks:
            for (offset, _), items in zip(spans, chunks, strict=True):
                error = unpoolable(items, first_index=offset)
                if error is not None:
                    raise error
                launched.append(self.launch(items))
        result = concatenate([pending.result() for pending in launched], self.dimension)
        result.stats.seconds = time.perf_counter() - started  # wall time: the launches overlap
        return result

    def embed(self, items: Sequence[TokenizedPair]) -> Embeddings:
        """Embed tokenized pairs and wait for their vectors (``launch(items).result()``)."""
        return self.launch(items).result()

    def launch(self, items: Sequence[TokenizedPair]) -> PendingEmbeddings:
        """Queue every micro-batch of ``items`` (length-sorted, padding-aware plan) on the device and start
        copying their vectors to host memory; on CPU the work is done when this returns."""
        started = time.perf_counter()
        items = list(items)
        stats = EncodeStats(items=len(items))
        if not items:
            return PendingEmbeddings(items, [], None, self.dimension, stats, started)
        lengths = [len(item.input_ids) for item in items]
        fast = self._accelerated
        if self.streams:  # no padding to price: fill in order
            plan = packed_plan(lengths, self.settings.max_batch_tokens, self.settings.max_batch_rows)
        else:
            # With CUDA graphs a micro-batch runs in its bucket's shape: the plan prices that padding too.
            slots = fast.compute_slots if fast is not None else padded_slots
            plan = plan_micro_batches(lengths, self.settings.max_batch_tokens, self.settings.max_batch_rows,
                                      self.overhead_tokens, slots)
        pending: list[tuple[list[int], torch.Tensor]] = []
        with torch.inference_mode():
            for rows in plan:
                pending.extend(self._embed_rows([items[i] for i in rows], rows, stats))
            rows = [i for batch_rows, _ in pending for i in batch_rows]
            # One device->host copy for the whole launch keeps the accelerator from waiting on Python.
            vectors = torch.cat([vectors for _, vectors in pending])
            return PendingEmbeddings(items, rows, vectors, self.dimension, stats, started)

    def _embed_rows(self, batch: list[TokenizedPair], rows: list[int],
                    stats: EncodeStats) -> list[tuple[list[int], torch.Tensor]]:
        """One micro-batch; on accelerator OOM, split it in halves and retry each."""
        try:
            vectors = self._forward(batch)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                raise InsufficientMemory(
                    f"one item of {len(batch[0].input_ids)} tokens does not fit in {self.device} memory"
                ) from None
            stats.oom_splits += 1
            half = len(batch) // 2
            log.warning("out of memory on %d rows; retrying as %d + %d", len(batch), half, len(batch) - half)
            return (self._embed_rows(batch[:half], rows[:half], stats)
                    + self._embed_rows(batch[half:], rows[half:], stats))
        length = max(len(item.input_ids) for item in batch)
        tokens = sum(len(item.input_ids) for item in batch)
        stats.micro_batches += 1
        stats.tokens += tokens
        stats.padded_tokens += tokens if self.streams else length * len(batch)
        return [(rows, vectors)]

    def _forward(self, batch: list[TokenizedPair]) -> torch.Tensor:
        """Encoder + pooling + Dense + normalize for one micro-batch -> float32 (rows, dim)."""
        pooled = self._pooled_stream(batch) if self.streams else self._pooled_padded(batch)
        pooled = self._dense(pooled)
        if self.files.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def _pooled_stream(self, batch: list[TokenizedPair]) -> torch.Tensor:
        """Mean of each pair's pooled positions, its micro-batch run as one packed token stream (float32)."""
        lengths = np.array([len(item.input_ids) for item in batch])
        stream = np.concatenate([np.asarray(item.input_ids, dtype=np.int64) for item in batch])
        hidden = self._accelerated.run_stream(stream, lengths)[:len(stream)].float()
        # Each token's row, and whether it is pooled (at or after its row's pool_start): 1.0.1's masked mean.
        row_of = np.repeat(np.arange(len(batch)), lengths)
        position = np.arange(len(stream)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        pooled_mask = (position >= np.repeat([item.pool_start for item in batch], lengths)).astype(np.float32)
        counts = np.bincount(row_of, weights=pooled_mask, minlength=len(batch)).astype(np.float32)
        non_blocking = self.device.type == "cuda"
        mask_t = _to_device(pooled_mask, self.device, non_blocking)
        summed = torch.zeros(len(batch), hidden.shape[1], device=self.device).index_add_(
            0, _to_device(row_of, self.device, non_blocking), hidden * mask_t[:, None])
        return summed / _to_device(counts, self.device, non_blocking).clamp(min=1e-9)[:, None]

    def _pooled_padded(self, batch: list[TokenizedPair]) -> torch.Tensor:
        """Pooled token states of one padded micro-batch (float32)."""
        length = max(len(item.input_ids) for item in batch)
        input_ids = np.full((len(batch), length), self.pad_token_id, dtype=np.int64)
        attention = np.zeros((len(batch), length), dtype=np.int64)
        pooling = np.zeros((len(batch), length), dtype=np.float32)
        for row, item in enumerate(batch):
            n = len(item.input_ids)
            input_ids[row, :n] = item.input_ids
            attention[row, :n] = 1
            pooling[row, item.pool_start:n] = 1.0
        non_blocking = self.device.type == "cuda"
        attention_t = _to_device(attention, self.device, non_blocking)
        pooling_t = _to_device(pooling, self.device, non_blocking)
        if self._accelerated is not None:
            hidden = self._accelerated(_to_device(input_ids, self.device, non_blocking), attention_t)
        else:
            input_ids_t = _to_device(input_ids, self.device, non_blocking)
            hidden = self._model(input_ids=input_ids_t, attention_mask=attention_t).last_hidden_state
        return _pool(hidden.float(), pooling_t, attention_t, self.files.pooling_mode)

    def warmup(self) -> float:
        """Run short and full-length batches once (allocator, kernels, autotuning); returns seconds."""
        started = time.perf_counter()
        if self._accelerated is not None:
            self._accelerated.warmup(self.max_seq_length)
        word = "warm up "
        pairs = [("Represent the sentence:", word * n) for n in (1, 8, 64, self.max_seq_length)]
        self.encode(pairs, chunk_pairs=2)  # the serving path's shape: chunks, look-ahead thread, async copies
        return time.perf_counter() - started

    def _resolve_mode(self, mode: InstructionMode) -> InstructionMode:
        if mode is InstructionMode.AUTO:
            return InstructionMode.INSTRUCTOR if self.files.is_instructor_layout else InstructionMode.PROMPT
        return mode

    def _infer_dimension(self) -> int:
        with torch.inference_mode():
            probe = self._forward([TokenizedPair(self._tokenizer.encode(["a"])[0][0], 0, False)])
        return int(probe.shape[1])


def _to_device(array: np.ndarray, device: torch.device, non_blocking: bool) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if non_blocking:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=non_blocking)


def _pool(hidden: torch.Tensor, pooling_mask: torch.Tensor, attention: torch.Tensor,
          mode: str) -> torch.Tensor:
    """Pool token states (float32) over ``pooling_mask`` as sentence-transformers / 1.0.1 do."""
    if mode == "cls":
        return hidden[:, 0]
    mask = pooling_mask.unsqueeze(-1)
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    if mode == "lasttoken":
        last = attention.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def unpoolable(items: Sequence[TokenizedPair], first_index: int = 0) -> NothingToEmbed | None:
    """The error for the first pair with nothing to pool (its instruction covers its whole text), else None.

    Pairs are numbered from ``first_index``: the caller's numbering (a request's pairs, an encode call's)."""
    index = next((i for i, item in enumerate(items) if item.pooled_tokens <= 0), None)
    if index is None:
        return None
    return NothingToEmbed(
        f"pair {first_index + index}: the instruction covers the whole joined text (instruction + sentence), so "
        "no token is left to embed; InstructorEmbedding 1.0.1 fails or returns a zero vector here. "
        "Send a longer sentence or a shorter instruction"
    )


def concatenate(parts: Sequence[Embeddings], dimension: int) -> Embeddings:
    """Several results as one, in order."""
    stats = EncodeStats()
    for part in parts:
        stats.add(part.stats)
    vectors = np.concatenate([part.vectors for part in parts]) if parts else np.empty((0, dimension), np.float32)
    return Embeddings(vectors, [item for part in parts for item in part.items], stats)


def _load_transformer(files: ModelDirectory, precision: Precision,
                      device: torch.device) -> tuple[torch.nn.Module, int]:
    """The encoder in eval mode on ``device``; T5 checkpoints load as encoder-only models."""
    import transformers  # deferred: importing transformers costs seconds, keep it off import paths

    transformers.utils.logging.disable_progress_bar()  # a per-load progress bar only clutters worker logs

    config = transformers.AutoConfig.from_pretrained(files.transformer_dir, local_files_only=True)
    if files.model_type == "t5":
        model_class = transformers.T5EncoderModel
    elif files.model_type == "mt5":
        model_class = transformers.MT5EncoderModel
    else:
        model_class = transformers.AutoModel
    dtype = torch.bfloat16 if precision is Precision.BFLOAT16 else torch.float32
    model = model_class.from_pretrained(
        files.transformer_dir, config=config, dtype=dtype, local_files_only=True,
        weights_only=True,  # never unpickle code from a .bin checkpoint
    )
    model.eval()
    if precision is Precision.INT8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated but still the CPU path
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model.to(device)
    pad = getattr(config, "pad_token_id", None)
    return model, int(pad) if pad is not None else 0
