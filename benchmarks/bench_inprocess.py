"""In-process benchmark: the encoder core vs InstructorEmbedding 1.0.1's encode on the same pairs, in one run.

Measures pairs/s and tokens/s of ``InstructorEncoder.encode`` (tokenization included) and of the baseline
(benchmarks/baseline_encode.py: fp32, batches of 32 sorted by length, padded to the longest), the share of the
bf16 arithmetic ceiling (CUDA), and the least cosine between the core's vectors and the baseline's fp32
vectors. Core and baseline repeats are interleaved so that a noisy machine slows both alike; figures are
medians. Result keys call the baseline "seed".

Examples:
  python -m benchmarks.bench_inprocess --shape base --device cpu --pairs 256            # fp32 defaults vs baseline
  python -m benchmarks.bench_inprocess --shape base --device cpu --precision int8 --pairs 256
  python -m benchmarks.bench_inprocess --shape large --device cuda --variants hf,fused,default \\
      --planner 16384:128:512,65536:512:2048
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import results
from benchmarks.baseline_encode import BaselineEncoder
from benchmarks.make_bench_model import SHAPES, make_model
from benchmarks.workload import check_lengths, make_pairs
from handler import encoder as encoder_module
from handler.encoder import InstructorEncoder, TokenizedPair
from handler.settings import Settings

# Named acceleration variants: Settings fields (CUDA + bf16 only; on CPU every variant is the Hugging Face path).
VARIANTS: dict[str, dict[str, Any]] = {
    "hf": {"fast_forward": False},
    "fused": {"cuda_graphs": False},
    "default": {},
    # Padded micro-batches in CUDA graphs (the default before packed streams).
    "padded": {"packed_stream": False},
}


@dataclasses.dataclass
class Measurement:
    label: str
    precision: str
    seconds: list[float]
    pairs: int
    tokens: int
    flops: float
    padding: float | None = None
    micro_batches: int | None = None
    min_cosine: float | None = None
    setup_seconds: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.median

    def row(self, on_cuda: bool) -> list[Any]:
        ceiling = f"{100 * self.flops / self.median / results.BF16_CEILING_FLOPS:.1f}%" if on_cuda else "-"
        spread = f"{min(self.seconds):.3f}-{max(self.seconds):.3f}"
        return [self.label, self.precision, round(self.pairs_per_s, 1), round(self.tokens / self.median),
                ceiling, spread,
                "-" if self.padding is None else f"{100 * self.padding:.1f}%",
                "-" if self.micro_batches is None else self.micro_batches,
                "-" if self.min_cosine is None else f"{self.min_cosine:.6f}",
                "-" if self.setup_seconds is None else f"{self.setup_seconds:.1f}"]


HEADER = ["method", "precision", "pairs/s", "tokens/s", "% bf16 ceiling", "run s (min-max)", "padding",
          "micro-batches", "min cos vs 1.0.1 fp32", "setup s"]


def parse_planner(text: str) -> list[tuple[int, int, int]]:
    """'16384:128:512,65536:512:2048' -> [(max_batch_tokens, max_batch_rows, overhead_tokens), ...]."""
    out = []
    for item in filter(None, text.split(",")):
        tokens, rows, overhead = (int(x) for x in item.split(":"))
        out.append((tokens, rows, overhead))
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def real_text_pairs() -> list[tuple[str, str]]:
    """The tests' reference corpus: real sentences, instructions, long and odd texts (tests/reference/cases.py)."""
    from tests.reference.cases import PAIRS

    return [(case.instruction, case.text) for case in PAIRS]


def real_text_cosine(core: InstructorEncoder, seed: BaselineEncoder) -> float:
    """Least cosine between the core's and 1.0.1's fp32 vectors on the real-text corpus (poolable pairs)."""
    pairs = real_text_pairs()
    items = core.tokenize(pairs)
    pairs = [pair for pair, item in zip(pairs, items, strict=True) if item.pooled_tokens > 0]
    return min_cosine(core.encode(pairs).vectors, seed.encode(pairs))


def measure_dynamic(core: InstructorEncoder, items: list[TokenizedPair], size: int, repeats: int,
                    sync: Callable[[], None], precision: str, flops: float) -> Measurement:
    """The workload as a worker receives it: tokenized batches of ``size`` pairs in arrival order, one
    ``embed`` call each (plan, micro-batches, graphs, the copy to the host), one after another."""
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    for batch in batches:  # every shape once
        core.embed(batch)
    label = f"core, dynamic batches of {size} pairs (embed per batch, tokenized)"
    m = Measurement(label, precision, [], len(items), sum(len(i.input_ids) for i in items), flops)
    padded = micro = 0
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        for batch in batches:
            stats = core.embed(batch).stats
            padded += stats.padded_tokens
            micro += stats.micro_batches
        m.seconds.append(time.perf_counter() - started)
    m.padding = 1 - m.tokens * repeats / padded
    m.micro_batches = round(micro / repeats)
    print(f"  {label}: {m.pairs_per_s:.1f} pairs/s", flush=True)
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="model shape (default: base)")
    parser.add_argument("--model-dir", type=Path, help="model directory (default: <temp dir>/instructor-bench/SHAPE, "
                                                       "written by make_bench_model if missing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--precision", default="auto", help="the core's precision setting (default: auto)")
    parser.add_argument("--pairs", type=int, help="pairs per encode call (default: 4096 on CUDA, 256 on CPU)")
    parser.add_argument("--seed-pairs", type=int, help="pairs for the baseline (default: --pairs); the core's "
                                                       "cosine is checked on these")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method (default: 3)")
    parser.add_argument("--seed-repeats", type=int, help="timed runs of the baseline (default: --repeats)")
    parser.add_argument("--no-seed", action="store_true", help="skip the baseline")
    parser.add_argument("--max-batch-tokens", type=int, help="headline setting (default: Settings default)")
    parser.add_argument("--max-batch-rows", type=int, help="headline setting (default: Settings default)")
    parser.add_argument("--overhead-tokens", type=int, help="planner per-batch overhead (default: the encoder's)")
    parser.add_argument("--variants", default="default",
                        help=f"acceleration variants to time, first is the headline ({', '.join(VARIANTS)}; "
                             "default: default)")
    parser.add_argument("--planner", default="", help="extra planner settings to time with the headline variant: "
                                                      "TOKENS:ROWS:OVERHEAD,... (default: none)")
    parser.add_argument("--latency", type=int, default=0,
                        help="also time N single-pair encode calls with the headline (c=1 latency; default: 0)")
    parser.add_argument("--dynamic-batch", type=int, default=0,
                        help="also time the headline fed the workload in tokenized batches of N pairs in arrival "
                             "order, one embed call each, as a worker's dynamic batches (default: 0, off)")
    parser.add_argument("--results-dir", type=Path, default=results.BENCH_DIR,
                        help="where RESULTS.md and results.json are (default: benchmarks/)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md/results.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    n_pairs = args.pairs or (4096 if on_cuda else 256)
    n_seed = min(args.seed_pairs or n_pairs, n_pairs)
    seed_repeats = args.seed_repeats or args.repeats
    shape = SHAPES[args.shape]
    model_dir = args.model_dir or Path(tempfile.gettempdir()) / "instructor-bench" / args.shape
    if not (model_dir / "config.json").exists():
        print(f"writing {args.shape} model to {model_dir} ...", flush=True)
        make_model(args.shape, model_dir)
    pairs = make_pairs(n_pairs)
    lengths = check_lengths(pairs, model_dir / "tokenizer.json")
    print(f"{n_pairs} pairs, {lengths.tokens} tokens (mean {lengths.mean:.1f}, {lengths.min}-{lengths.max}), "
          f"{args.shape} on {results.card_description(args.device)}", flush=True)
    overrides: dict[str, Any] = {"precision": args.precision}
    if args.max_batch_tokens:
        overrides["max_batch_tokens"] = args.max_batch_tokens
    if args.max_batch_rows:
        overrides["max_batch_rows"] = args.max_batch_rows
    if args.overhead_tokens is not None:
        overrides["micro_batch_overhead_tokens"] = args.overhead_tokens
    settings = Settings.from_sources({**overrides, **VARIANTS.get(args.variants.split(",")[0].strip(), {})},
                                     environ={})
    overhead = settings.micro_batch_overhead_tokens
    if overhead is None:
        overhead = encoder_module.DEFAULT_OVERHEAD_TOKENS.get(device.type, 0)

    variant_names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variant_names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    # ---- the core, headline variant ---------------------------------------------------------
    setup, core = timed(lambda: InstructorEncoder(model_dir, settings, args.device))
    warm, _ = timed(core.warmup)
    core.encode(pairs)  # every micro-batch shape once: lazy kernels, cuBLAS heuristics, graphs
    sync()
    precision = core.precision.value
    tokenize_s, items = timed(lambda: core.tokenize(pairs))
    n_tokens = sum(len(i.input_ids) for i in items)
    flops = sum(len(i.input_ids) * shape.flops_per_token(len(i.input_ids)) for i in items)

    headline_label = (f"core {variant_names[0]} ({settings.max_batch_tokens} tok, {settings.max_batch_rows} rows, "
                      f"overhead {overhead})")
    headline = Measurement(headline_label, precision, [], n_pairs, n_tokens, flops,
                           setup_seconds=setup + warm)
    seed_m: Measurement | None = None
    seed = None
    seed_vectors: np.ndarray | None = None
    if not args.no_seed:
        seed_setup, seed = timed(lambda: BaselineEncoder(model_dir, args.device))
        seed.encode(pairs[:64])
        seed_tokens = sum(len(i.input_ids) for i in items[:n_seed])
        seed_flops = sum(len(i.input_ids) * shape.flops_per_token(len(i.input_ids)) for i in items[:n_seed])
        seed_m = Measurement(f"InstructorEmbedding 1.0.1's encode (batches of 32, {seed.attn_implementation} "
                             "attention)", "float32", [],
                             n_seed, seed_tokens, seed_flops, setup_seconds=seed_setup)

    core_vectors = None
    for repeat in range(max(args.repeats, seed_repeats if seed else 0)):
        if seed is not None and seed_m is not None and repeat < seed_repeats:
            seconds, seed_vectors = timed(lambda: seed.encode(pairs[:n_seed]))
            seed_m.seconds.append(seconds)
        if repeat < args.repeats:
            seconds, embeddings = timed(lambda: core.encode(pairs))
            headline.seconds.append(seconds)
            core_vectors = embeddings.vectors
            headline.padding = embeddings.stats.padding_ratio
            headline.micro_batches = embeddings.stats.micro_batches
        print(f"  repeat {repeat + 1}: core {headline.seconds[-1]:.3f} s"
              + (f", seed {seed_m.seconds[-1]:.3f} s" if seed_m and seed_m.seconds else ""), flush=True)
    if seed_vectors is not None and core_vectors is not None:
        headline.min_cosine = min_cosine(core_vectors[:n_seed], seed_vectors)
    dynamic: Measurement | None = None
    if args.dynamic_batch:
        dynamic = measure_dynamic(core, items, args.dynamic_batch, args.repeats, sync, precision, flops)
    real_cosine: float | None = None
    if seed is not None:
        real_cosine = real_text_cosine(core, seed)
    single_ms: list[float] = []
    for index in range(args.latency):
        seconds, _ = timed(lambda index=index: core.encode([pairs[index % n_pairs]]))
        single_ms.append(1000 * seconds)
    rows = [headline] + ([dynamic] if dynamic is not None else [])
    if seed is not None:
        del seed  # free its fp32 weights before more variants run
        if on_cuda:
            torch.cuda.empty_cache()

    # ---- more variants and planner settings (same encoder object, same pairs) -------------------
    def measure(label: str) -> Measurement:
        core.encode(pairs)  # warm this configuration's shapes
        sync()
        m = Measurement(label, precision, [], n_pairs, n_tokens, flops)
        for _ in range(args.repeats):
            seconds, embeddings = timed(lambda: core.encode(pairs))
            m.seconds.append(seconds)
        m.padding = embeddings.stats.padding_ratio
        m.micro_batches = embeddings.stats.micro_batches
        if seed_vectors is not None:
            m.min_cosine = min_cosine(embeddings.vectors[:n_seed], seed_vectors)
        print(f"  {label}: {m.pairs_per_s:.1f} pairs/s", flush=True)
        return m

    base_settings = core.settings
    for tokens, max_rows, batch_overhead in parse_planner(args.planner):
        core.settings = dataclasses.replace(base_settings, max_batch_tokens=tokens, max_batch_rows=max_rows,
                                            micro_batch_overhead_tokens=batch_overhead)
        rows.append(measure(f"core {variant_names[0]} ({tokens} tok, {max_rows} rows, overhead {batch_overhead})"))
    core.settings = base_settings
    core = None  # one model copy at a time on the device
    if on_cuda:
        torch.cuda.empty_cache()
    for name in variant_names[1:]:
        started = time.perf_counter()
        try:
            core = InstructorEncoder(model_dir, dataclasses.replace(settings, **VARIANTS[name]), args.device)
            core.warmup()
            m = measure(f"core {name}")
            core = None
        except Exception as exc:  # one broken lever must not lose the other figures of the run
            print(f"  variant {name} failed: {exc!r}", flush=True)
            m = Measurement(f"core {name}: FAILED {type(exc).__name__}", precision, [float("inf")], n_pairs,
                            n_tokens, flops)
        m.setup_seconds = time.perf_counter() - started
        rows.append(m)
        if on_cuda:
            torch.cuda.empty_cache()

    # ---- report ------------------------------------------------------------------------------
    if seed_m is not None:
        rows.append(seed_m)
    table = results.markdown_table(HEADER, [m.row(on_cuda) for m in rows])
    notes = [f"{n_pairs} pairs (baseline: {n_seed}), {n_tokens} tokens, mean {n_tokens / n_pairs:.1f} tokens/pair; "
             f"tokenization of all pairs alone: {tokenize_s:.3f} s; core setup (load + warm-up) "
             f"{setup:.1f} + {warm:.1f} s; median of {args.repeats} runs (baseline: {seed_repeats})."]
    if single_ms:
        single_ms.sort()
        notes.append(f"single-pair encode (c=1, {len(single_ms)} calls): p50 {statistics.median(single_ms):.2f} ms, "
                     f"p99 {single_ms[int(0.99 * (len(single_ms) - 1))]:.2f} ms")
    if real_cosine is not None:
        notes.append(f"real text (the tests' reference corpus, {len(real_text_pairs())} pairs): min cosine vs "
                     f"1.0.1 fp32 {real_cosine:.6f}")
    ratio = None
    if seed_m is not None:
        ratio = headline.pairs_per_s / seed_m.pairs_per_s
        notes.append(f"core / InstructorEmbedding 1.0.1's encode: {ratio:.2f}x")
    print()
    print(table)
    print("\n".join(notes))

    figures: dict[str, float] = {}
    card = results.card_name(args.device)
    prefix = f"{card}_{args.shape}" + ("" if precision in ("bfloat16", "float32") else f"_{precision}")
    figures[f"{prefix}_inprocess_pairs_per_s"] = headline.pairs_per_s
    figures[f"{prefix}_inprocess_tokens_per_s"] = headline.tokens / headline.median
    if single_ms:
        figures[f"{prefix}_inprocess_single_p50_ms"] = statistics.median(single_ms)
    if seed_m is not None and ratio is not None:
        figures[f"{card}_{args.shape}_seed_inprocess_pairs_per_s"] = seed_m.pairs_per_s
        figures[f"{prefix}_inprocess_over_seed_ratio"] = ratio
    if dynamic is not None:
        figures[f"{prefix}_batch{args.dynamic_batch}_inprocess_pairs_per_s"] = dynamic.pairs_per_s
    if headline.min_cosine is not None:
        short = {"bfloat16": "bf16", "float32": "fp32"}.get(precision, precision)
        key = f"{args.shape}_{short}_min_cosine_vs_fp32" if on_cuda else f"cpu_{args.shape}_{short}_min_cosine_vs_fp32"
        # The least cosine over the workload and the real-text corpus: the bar holds for both.
        figures[key] = min(headline.min_cosine, real_cosine if real_cosine is not None else 1.0)
    if not args.no_record:
        results.record(f"bench_inprocess {args.shape}", args.device,
                       f"{table}\n\n" + "\n".join(notes), figures, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
