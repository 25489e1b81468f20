"""One frozen settings object for the encoder core and the serving adapter.

Sources, lowest to highest precedence: the defaults below, the ``handler:`` section of
model-config.yaml (a mapping), then environment variables ``INSTRUCTOR_<FIELD>`` (upper case).
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from typing import Any


class Precision(str, enum.Enum):
    """Numeric precision of the encoder weights and activations."""

    AUTO = "auto"  # bfloat16 on CUDA, float32 on CPU
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"  # CPU only: dynamic int8 quantization of the Linear layers (opt-in, not exact)


class InstructionMode(str, enum.Enum):
    """How the instruction of a pair is used."""

    AUTO = "auto"  # INSTRUCTOR for the hkunlp layout (T5 encoder + Dense), PROMPT otherwise
    INSTRUCTOR = "instructor"  # InstructorEmbedding 1.0.1: instruction attended to, excluded from pooling
    PROMPT = "prompt"  # sentence-transformers prompt: prefix pooled like any other token


class EngineMode(str, enum.Enum):
    """Where a worker's micro-batches run (handler/engine.py)."""

    WORKER = "worker"  # each worker holds its own model copy and runs its own batches
    SHARED = "shared"  # one engine process per model and device merges every worker's work


class SettingsError(ValueError):
    """A setting has a wrong type or value; the message names the setting."""


# Precision names people try that we refuse with a reason instead of "unknown value".
_REFUSED_PRECISIONS = {
    "float16": "float16 overflows in T5 feed-forward layers (inf/NaN embeddings); use bfloat16",
    "fp16": "float16 overflows in T5 feed-forward layers (inf/NaN embeddings); use bfloat16",
    "half": "float16 overflows in T5 feed-forward layers (inf/NaN embeddings); use bfloat16",
}
_PRECISION_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that can be configured; see README "Configuration" for the table."""

    precision: Precision = Precision.AUTO
    # None: the model's sentence_bert_config.json value (512 for hkunlp models).
    max_seq_length: int | None = None
    instruction_mode: InstructionMode = InstructionMode.AUTO
    # Micro-batches inside one encode call: rows x padded length <= max_batch_tokens, rows <= max_batch_rows.
    max_batch_tokens: int = 16384
    max_batch_rows: int = 128
    # What the planner charges for one more micro-batch, in token slots (launches, one more read of the
    # weights): lower cuts a batch into more micro-batches with less padding. None: the device's default
    # (handler/encoder.py: DEFAULT_OVERHEAD_TOKENS).
    micro_batch_overhead_tokens: int | None = None
    # Request limits, checked before any tokenization (413).
    max_pairs_per_request: int = 256
    max_chars_per_text: int = 20000
    # What one dynamic batch may cost, so that no batch can run into TorchServe's responseTimeout (which
    # kills the worker): characters given to the tokenizer (sum over its pairs of instruction + sentence)
    # and tokens given to the encoder (after truncation). A request over a limit alone is refused (413);
    # requests that would take a batch over it are answered 503 (retry). None: measured at start-up, as
    # what this worker tokenizes (worst-case text) in 10% of responseTimeout and embeds in 25% of it. The
    # measurement assumes the worker has its device to itself: pin both when several CPU workers share cores.
    max_batch_request_chars: int | None = None
    max_batch_request_tokens: int | None = None
    # Bytes of one worker reply (all responses of a dynamic batch travel to the frontend as one message, and
    # TorchServe 0.12's frontend decodes it in time that grows with the square of its size): requests whose
    # predicted replies would take the batch over it get 503 (retry). Never below one largest valid request.
    max_batch_reply_bytes: int = 16 * 2**20
    # A dynamic batch goes through tokenize -> embed -> render in chunks of about this many pairs, so that
    # the next chunk is tokenized while the accelerator embeds this one and this one is rendered while it
    # embeds the next. Requests are never split across chunks.
    stage_chunk_pairs: int = 128
    # Threads that tokenize a dynamic batch (tokenizers' thread pool). None: the cores this worker may use,
    # at most 4 (several workers share a GPU host's cores; a batch of a few hundred pairs gains little
    # beyond 4 threads); 1 disables the pool.
    tokenizer_threads: int | None = None
    # Where the model runs: each worker's own copy, or one engine process per model and device shared by its
    # workers (they tokenize and render; it merges their work into bulk-sized micro-batches in one CUDA
    # context, with one weights copy). shared holds a third of the GPU memory of 4 workers but was measured
    # 10-36% slower on an H100 (its one thread launches every step; benchmarks/NOTES.md, run 6).
    engine: EngineMode = EngineMode.WORKER
    # Run a few encodes at initialize so the first request does not pay for lazy init / autotuning.
    warmup: bool = True
    # CUDA + bfloat16 only (handler/acceleration.py): the fused T5 forward, and CUDA graphs; for padded
    # micro-batches (packed_stream off or unavailable), one for every micro-batch of at most graph_max_rows rows
    # and graph_max_tokens padded tokens (captured at warm-up).
    # 16384 (= max_batch_tokens) graphs every micro-batch a dynamic batch can make: served 5-9% more pairs/s
    # than 8192 on an H100 (eager micro-batches are host-bound), for ~0.8 GB more per worker (large).
    fast_forward: bool = True
    cuda_graphs: bool = True
    # CUDA + bfloat16, mean pooling: each micro-batch runs as ONE packed token stream (no padding rows), its
    # attention by a varlen kernel (handler/varlen.py, Triton), in a CUDA graph per stream length (67, up to
    # max_batch_tokens). Measured on an H100 against padded micro-batches: +12-14% in bulk, +45-48% on
    # 64-pair dynamic batches (benchmarks/NOTES.md, round 8). Where Triton or its kernel is unavailable, or differs from
    # the Hugging Face forward on a probe at load, the padded micro-batches (and the graph_* settings) serve.
    packed_stream: bool = True
    graph_max_rows: int = 128
    graph_max_tokens: int = 16384
    # The instruction of OpenAI embeddings requests that send none ("": plain text, 1.0.1's encode([text])).
    default_instruction: str = ""

    def __post_init__(self) -> None:
        positive = ("max_batch_tokens", "max_batch_rows", "max_pairs_per_request", "max_chars_per_text",
                    "max_batch_request_chars", "max_batch_request_tokens", "max_batch_reply_bytes",
                    "stage_chunk_pairs", "tokenizer_threads", "graph_max_rows", "graph_max_tokens")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"setting '{name}' must be >= 1, got {value}")
        if self.micro_batch_overhead_tokens is not None and self.micro_batch_overhead_tokens < 0:
            raise SettingsError("setting 'micro_batch_overhead_tokens' must be >= 0, got "
                                f"{self.micro_batch_overhead_tokens}")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise SettingsError(f"setting 'max_seq_length' must be >= 2, got {self.max_seq_length}")
        if self.max_seq_length is not None:
            self.check_fits(self.max_seq_length)

    def shares_engine(self) -> bool:
        """Whether the workers embed through the shared device engine."""
        return self.engine is EngineMode.SHARED

    def check_fits(self, max_seq_length: int) -> None:
        """One full-length item must fit in a micro-batch (also checked with the model's own value)."""
        if max_seq_length > self.max_batch_tokens:
            raise SettingsError(
                f"setting 'max_batch_tokens' ({self.max_batch_tokens}) must be >= max_seq_length "
                f"({max_seq_length}): one full-length item must fit in a micro-batch"
            )

    @classmethod
    def from_sources(
        cls, section: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from a model-config.yaml ``handler:`` mapping and ``INSTRUCTOR_*`` env vars."""
        raw: dict[str, Any] = {}
        if section is not None:
            if not isinstance(section, Mapping):
                raise SettingsError(f"the 'handler' section must be a mapping, got {type(section).__name__}")
            raw.update(section)
        env = os.environ if environ is None else environ
        for field in dataclasses.fields(cls):
            value = env.get(f"INSTRUCTOR_{field.name.upper()}")
            if value is not None and value != "":
                raw[field.name] = value
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{name: _coerce(known[name], value) for name, value in raw.items()})

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for logging and for writing model-config.yaml."""
        return {
            f.name: (v.value if isinstance(v, enum.Enum) else v)
            for f, v in ((f, getattr(self, f.name)) for f in dataclasses.fields(self))
        }


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Turn a yaml or env value into the field's type, or raise SettingsError naming the field."""
    name = field.name
    default = field.default
    if isinstance(default, enum.Enum):
        enum_type = type(default)
        text = str(value).strip().lower()
        if enum_type is Precision:
            if text in _REFUSED_PRECISIONS:
                raise SettingsError(f"setting 'precision': {text} is refused: {_REFUSED_PRECISIONS[text]}")
            text = _PRECISION_ALIASES.get(text, text)
        try:
            return enum_type(text)
        except ValueError:
            choices = ", ".join(m.value for m in enum_type)
            raise SettingsError(f"setting '{name}' must be one of {choices}; got {value!r}") from None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"setting '{name}' must be true or false; got {value!r}")
    if default is None and (value is None or str(value).strip().lower() in ("", "none", "null", "auto")):
        return None
    if isinstance(default, int) or default is None:  # the optional fields are all integers
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise SettingsError(f"setting '{name}' must be an integer; got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"setting '{name}' must be an integer; got {value!r}") from None
    if name == "default_instruction":  # the one string setting that may be empty
        if not isinstance(value, str):
            raise SettingsError(f"setting '{name}' must be a string; got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise SettingsError(f"setting '{name}' must be a non-empty string; got {value!r}")
        return value
    raise SettingsError(f"setting '{name}' has an unsupported value {value!r}")  # pragma: no cover
