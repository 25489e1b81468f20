"""The embedding core: [instruction, text] pairs in, float32 vectors out, InstructorEmbedding-1.0.1-exact.

Knows nothing of TorchServe. What 1.0.1 computes for a pair (see docs/compatibility.md):
  joined = (instruction + text.strip()).strip()     # no separator; lower-cased if do_lower_case
  k      = tokens(instruction.strip()) - 1          # the trailing </s> is not part of the instruction
  k      = 0 if k <= 1                              # a one-token instruction is not masked
The encoder attends over ALL tokens of ``joined``; pooling skips the first k positions of each row;
then the Dense head and L2 normalisation. k is per row, so one batch can mix any instructions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from handler.acceleration import accelerate
from handler.batching import padded_slots, plan_micro_batches
from handler.chunks import FIRST_CHUNK_PAIRS, chunk_offsets
from handler.errors import InsufficientMemory, NothingToEmbed
from handler.model_directory import ModelDirectory, load_dense_layers, read_model_directory
from handler.packing import packed_plan, plan_layout
from handler.settings import InstructionMode, Precision, Settings, SettingsError
from handler.tokenization import BoundedTokenizer

log = logging.getLogger(__name__)

Pair = tuple[str, str]
_INSTRUCTION_CACHE_SIZE = 4096
# What one extra micro-batch costs, in padded-token slots (launch + host overhead); tunes the planner.
_BATCH_OVERHEAD_TOKENS = {"cuda": 512, "cpu": 32}


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


@dataclasses.dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32, shape (n, dimension), input order
    token_counts: list[int]  # tokens embedded per pair (after truncation, special tokens included)
    truncated: list[bool]
    stats: EncodeStats


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
        self.settings = settings or Settings()
        self.device = torch.device(device)
        self.files: ModelDirectory = read_model_directory(model_dir)
        self.precision = resolve_precision(self.settings.precision, self.device)
        self.mode = self._resolve_mode(self.settings.instruction_mode)
        self.max_seq_length = self.settings.max_seq_length or self.files.max_seq_length or 512
        self.settings.check_fits(self.max_seq_length)  # the model's own value may exceed the budget
        self._tokenizer = BoundedTokenizer(self.files.tokenizer_file, self.max_seq_length)
        self._instruction_lengths: dict[str, int] = {}

        started = time.perf_counter()
        self._model, self.pad_token_id = _load_transformer(self.files, self.precision, self.device)
        self._accelerated = accelerate(self._model, self.device, self.precision, self.settings)  # None: CPU, fp32, int8
        self._dense = torch.nn.Sequential(*load_dense_layers(self.files)).to(self.device).eval()
        self.dimension = self._infer_dimension()
        log.info(
            "loaded %s (%s, %s, mode=%s, max_seq_length=%d, dim=%d) on %s in %.1f s",
            self.files.root, self.files.model_type, self.precision.value, self.mode.value,
            self.max_seq_length, self.dimension, self.device, time.perf_counter() - started,
        )

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
        missing = sorted({c for c in cleaned if c and c not in self._instruction_lengths})
        if missing:
            if len(self._instruction_lengths) + len(missing) > _INSTRUCTION_CACHE_SIZE:
                self._instruction_lengths.clear()  # bounded memory under many distinct instructions
            for text, (ids, _) in zip(missing, self._tokenizer.encode(missing), strict=True):
                self._instruction_lengths[text] = len(ids)
        starts = []
        for text in cleaned:
            # 1.0.1 tokenizes the instruction with the same truncation, then drops the </s>.
            k = self._instruction_lengths[text] - 1 if text else 0
            starts.append(0 if k <= 1 else k)
        return starts

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, pairs: Sequence[Pair], chunk_pairs: int = 2048) -> Embeddings:
        """Tokenize and embed; vectors come back in input order.

        Large inputs go in chunks tokenized on a helper thread (the tokenizer releases the GIL) while this
        thread queues the previous chunk's micro-batches on the accelerator, so neither waits for the other.
        Raises NothingToEmbed for a pair whose instruction covers its whole text.
        """
        started = time.perf_counter()
        stats = EncodeStats(items=len(pairs))
        token_counts: list[int] = []
        truncated: list[bool] = []
        pending: list[tuple[list[int], torch.Tensor]] = []
        spans = chunk_offsets(len(pairs), chunk_pairs, min(chunk_pairs, FIRST_CHUNK_PAIRS))
        offsets = [start for start, _ in spans]
        pool = ThreadPoolExecutor(max_workers=1) if len(offsets) > 1 else None
        try:
            if pool is None:
                tokenized = iter([self.tokenize(pairs)])
            else:
                futures = [pool.submit(self.tokenize, pairs[start:end]) for start, end in spans]
                tokenized = (future.result() for future in futures)
            with torch.inference_mode():
                for offset, items in zip(offsets, tokenized, strict=False):
                    empty = first_unpoolable(items)
                    if empty is not None:
                        raise NothingToEmbed(unpoolable_message(offset + empty))
                    token_counts += [len(item.input_ids) for item in items]
                    truncated += [item.truncated for item in items]
                    for rows, vectors in self._launch(items, stats):
                        pending.append(([offset + row for row in rows], vectors))
                vectors = self._collect(pending, len(pairs))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        stats.seconds = time.perf_counter() - started
        return Embeddings(vectors, token_counts, truncated, stats)

    def embed(self, items: Sequence[TokenizedPair]) -> tuple[np.ndarray, EncodeStats]:
        """Embed tokenized pairs in length-sorted micro-batches; results in input order."""
        started = time.perf_counter()
        stats = EncodeStats(items=len(items))
        with torch.inference_mode():
            out = self._collect(self._launch(items, stats), len(items))
        stats.seconds = time.perf_counter() - started
        return out, stats

    def _launch(self, items: Sequence[TokenizedPair], stats: EncodeStats) -> list[tuple[list[int], torch.Tensor]]:
        """Queue every micro-batch of ``items``; returns (row indices, vectors still on the device)."""
        if not items:
            return []
        lengths = [len(item.input_ids) for item in items]
        fast = self._accelerated
        if fast is not None and fast.packs(len(items)):  # no padding to price: fill micro-batches in order
            plan = packed_plan(lengths, self.settings.max_batch_tokens, self.settings.max_batch_rows)
        else:
            # With CUDA graphs a micro-batch runs in its bucket's shape: the plan prices that padding too.
            slots = fast.compute_slots if fast is not None else padded_slots
            plan = plan_micro_batches(lengths, self.settings.max_batch_tokens, self.settings.max_batch_rows,
                                      _BATCH_OVERHEAD_TOKENS.get(self.device.type, 0), slots)
        pending: list[tuple[list[int], torch.Tensor]] = []
        for rows in plan:
            pending.extend(self._embed_rows([items[i] for i in rows], rows, stats))
        return pending

    def _collect(self, pending: list[tuple[list[int], torch.Tensor]], count: int) -> np.ndarray:
        """One device->host copy at the end keeps the accelerator from waiting on Python between batches."""
        out = np.empty((count, self.dimension), dtype=np.float32)
        if pending:
            indices = [i for rows, _ in pending for i in rows]
            out[indices] = torch.cat([vectors for _, vectors in pending]).cpu().numpy()
        return out

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
        stats.micro_batches += 1
        stats.tokens += sum(len(item.input_ids) for item in batch)
        stats.padded_tokens += length * len(batch)
        return [(rows, vectors)]

    def _forward(self, batch: list[TokenizedPair]) -> torch.Tensor:
        """Encoder + pooling + Dense + normalize for one padded micro-batch -> float32 (rows, dim)."""
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
        if self._accelerated is not None and self._accelerated.packs(len(batch)):  # handler/packing.py
            stream = np.concatenate([np.asarray(item.input_ids, dtype=np.int64) for item in batch])
            layout = plan_layout([len(item.input_ids) for item in batch])
            hidden = self._accelerated.run_packed(stream, layout, length)
        elif self._accelerated is not None:
            hidden = self._accelerated(_to_device(input_ids, self.device, non_blocking), attention_t)
        else:
            input_ids_t = _to_device(input_ids, self.device, non_blocking)
            hidden = self._model(input_ids=input_ids_t, attention_mask=attention_t).last_hidden_state
        pooled = _pool(hidden.float(), pooling_t, attention_t, self.files.pooling_mode)
        pooled = self._dense(pooled)
        if self.files.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def warmup(self) -> float:
        """Run short and full-length batches once (allocator, kernels, autotuning); returns seconds."""
        started = time.perf_counter()
        if self._accelerated is not None:
            self._accelerated.warmup(self.max_seq_length)
        word = "warm up "
        pairs = [("Represent the sentence:", word * n) for n in (1, 8, 64, self.max_seq_length)]
        self.encode(pairs)
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


def first_unpoolable(items: Sequence[TokenizedPair]) -> int | None:
    """Index of the first pair with nothing to pool (its instruction covers its whole text), else None."""
    return next((i for i, item in enumerate(items) if item.pooled_tokens <= 0), None)


def unpoolable_message(index: int) -> str:
    return (f"pair {index}: the instruction covers the whole joined text (instruction + sentence), so no "
            "token is left to embed; InstructorEmbedding 1.0.1 fails or returns a zero vector here. "
            "Send a longer sentence or a shorter instruction")


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
