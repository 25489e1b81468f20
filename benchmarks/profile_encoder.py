"""Where the encoder's GPU time goes: ceilings, a per-kernel profile, and encoder variants timed in one run.

For one GPU host and one call: measures the card's two ceilings (a large bf16 matrix product, a device copy),
profiles a bulk micro-batch and a 64-pair dynamic batch kernel by kernel (grouped into matrix products,
attention, norms and the rest), times the attention kernels SDPA can use on the bulk shape (and FlexAttention
with the T5 bias as a ``score_mod``, when it compiles), then times encoder variants end to end on the
benchmark workload: bulk ``encode`` and 64-pair ``embed`` calls. Prints a short table per section; with
``--out DIR`` also writes the profiles as tables and chrome traces there. Nothing is recorded in RESULTS.md:
the figures of record come from bench_inprocess.

Examples:
  python -m benchmarks.profile_encoder --shape large --out /tmp/profile
  python -m benchmarks.profile_encoder --shape base --device cpu --pairs 128 --variants default   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import results
from benchmarks.make_bench_model import SHAPES, make_model
from benchmarks.workload import make_pairs
from handler import acceleration
from handler import encoder as encoder_module
from handler.batching import plan_micro_batches
from handler.encoder import InstructorEncoder, TokenizedPair
from handler.settings import Settings


@dataclasses.dataclass(frozen=True)
class Variant:
    """One encoder configuration to time."""

    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # Settings fields
    buckets: tuple[int, ...] = acceleration.COARSE_ROW_BUCKETS  # graph row buckets
    backends: tuple[str, ...] | None = None  # SDPA kernels of the padded forward (None: SDPA chooses)
    first_chunk: int = 256  # encode's first chunk of pairs
    stream: bool = False  # packed_stream: one token stream per micro-batch (the default); else padded


VARIANTS: dict[str, Variant] = {
    "before": Variant(first_chunk=2048),  # padded, the first chunk as before round 5
    "padded": Variant(),
    "padded_efficient": Variant(backends=("EFFICIENT_ATTENTION",)),
    "padded_fine16k": Variant(buckets=acceleration.FINE_ROW_BUCKETS, overrides={"graph_max_tokens": 16384}),
    "default": Variant(stream=True),
    # The planner's price of a micro-batch, and larger bulk micro-batches (all padded).
    "overhead128": Variant(overrides={"micro_batch_overhead_tokens": 128}),
    "overhead256": Variant(overrides={"micro_batch_overhead_tokens": 256}),
    "overhead1024": Variant(overrides={"micro_batch_overhead_tokens": 1024}),
    "rows256": Variant(overrides={"max_batch_rows": 256}),
    "rows256_overhead256": Variant(overrides={"max_batch_rows": 256, "micro_batch_overhead_tokens": 256}),
    "graphs32k": Variant(overrides={"graph_max_tokens": 32768}),
    "graphs_off": Variant(overrides={"cuda_graphs": False}),
}


CATEGORIES = (
    ("attention", ("fmha", "attention", "flash", "sdpa", "attn", "flex")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "splitk")),
    ("norm", ("rms", "norm")),
    ("copy/fill", ("copy", "memcpy", "memset", "fill", "cat")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    for label, needles in CATEGORIES:
        if any(needle in name for needle in needles):
            return label
    return "other (elementwise, embedding, reductions)"


def cuda_time(fn: Callable[[], Any], repeats: int = 10) -> float:
    """Median seconds of ``fn`` by CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def ceilings() -> list[list[Any]]:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm = cuda_time(lambda: a @ b)
    src = torch.randn(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    copy = cuda_time(lambda: dst.copy_(src))
    rows = [["bf16 matmul 8192^3", f"{2 * 8192**3 / gemm / 1e12:.0f} TFLOP/s"],
            ["device copy 2 GiB (read + write)", f"{2 * src.numel() * 4 / copy / 1e12:.2f} TB/s"]]
    return rows


def kernel_profile(fn: Callable[[], Any], label: str, out: Path | None) -> tuple[list[list[Any]], float, float]:
    """Kernel time by category for one call of ``fn``: (table rows, kernel seconds, wall seconds)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    per_kernel: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            per_kernel[event.name] += event.time_range.elapsed_us() / 1e6
            counts[event.name] += 1
    total = sum(per_kernel.values()) or 1e-12
    by_category: dict[str, float] = defaultdict(float)
    launches: dict[str, int] = defaultdict(int)
    for name, seconds in per_kernel.items():
        by_category[category(name)] += seconds
        launches[category(name)] += counts[name]
    rows = [[label, cat, f"{1000 * s:.3f}", f"{100 * s / total:.1f}%", launches[cat]]
            for cat, s in sorted(by_category.items(), key=lambda kv: -kv[1])]
    if out is not None:
        top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:40]
        text = "\n".join(f"{1000 * s:9.3f} ms {100 * s / total:5.1f}% x{counts[n]:<5d} {n[:160]}" for n, s in top)
        (out / f"kernels_{label}.txt").write_text(f"{label}: kernels {1000 * total:.3f} ms, wall {1000 * wall:.3f} ms"
                                                  f"\n{text}\n")
    return rows, total, wall


def bulk_batch(encoder: InstructorEncoder, items: list[TokenizedPair]) -> list[TokenizedPair]:
    """The largest micro-batch the planner makes of ``items`` (what bulk encode runs most)."""
    lengths = [len(i.input_ids) for i in items]
    fast = encoder._accelerated
    slots = fast.compute_slots if fast is not None else encoder_module.padded_slots
    plan = plan_micro_batches(lengths, encoder.settings.max_batch_tokens, encoder.settings.max_batch_rows,
                              encoder.overhead_tokens, slots)
    biggest = max(plan, key=lambda rows: len(rows) * max(lengths[i] for i in rows))
    return [items[i] for i in biggest]


def attention_table(encoder: InstructorEncoder, batch: list[TokenizedPair], flex: bool) -> list[list[Any]]:
    """One layer's attention on the bulk batch's shape: SDPA's kernels, FlexAttention if it compiles."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = encoder._accelerated
    rows, length = len(batch), max(len(i.input_ids) for i in batch)
    heads, d_kv = fast.num_heads, fast.d_kv
    lengths = torch.tensor([len(i.input_ids) for i in batch], device="cuda")
    attention = (torch.arange(length, device="cuda")[None, :] < lengths[:, None]).long()
    bias = fast._attention_bias(attention, length)
    qkv = torch.randn(rows, length, 3, heads, d_kv, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    flops = 4 * rows * length * length * heads * d_kv
    table = []
    for name in ("default", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        try:
            # "default" lets SDPA pick, as the encoder's own calls do.
            context = contextlib.nullcontext() if name == "default" else sdpa_kernel([getattr(SDPBackend, name)])
            with context:
                seconds = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0))
            table.append([f"SDPA {name}", f"{rows}x{length}", f"{1e6 * seconds:.1f}",
                          f"{flops / seconds / 1e12:.0f}"])
        except Exception as exc:
            table.append([f"SDPA {name}", f"{rows}x{length}", f"failed: {type(exc).__name__}", "-"])
    if not flex:
        return table
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        position = fast._bias_module.compute_bias(length, length, device="cuda")[0].to(torch.bfloat16)  # (H, L, L)
        key_lengths = lengths

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + position[h, q_idx, kv_idx]

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx < key_lengths[b]

        compiled = torch.compile(flex_attention)
        started = time.perf_counter()
        block_mask = create_block_mask(mask_mod, rows, None, length, length, device="cuda")
        compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
        seconds = cuda_time(lambda: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0))
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0).float()
        got = compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0).float()
        error = float((got - want).norm() / want.norm())
        table.append([f"FlexAttention (compile {compile_s:.0f} s, rel err {error:.1e})", f"{rows}x{length}",
                      f"{1e6 * seconds:.1f}", f"{flops / seconds / 1e12:.0f}"])
    except Exception as exc:
        table.append(["FlexAttention", f"{rows}x{length}", f"failed: {exc!r}"[:120], "-"])
    return table


def gpu_busy(fn: Callable[[], Any]) -> float:
    """Share of one call's wall time in which at least one kernel ran (CUDA activity only, so the profiler
    adds little host time): below 1, the device waited on the host."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if str(getattr(e, "device_type", "")).endswith("CUDA") and e.time_range.end > e.time_range.start)
    covered, reach = 0.0, float("-inf")
    for start, end in spans:  # union of the kernels' intervals, in microseconds
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered / 1e6 / wall


@dataclasses.dataclass
class VariantResult:
    name: str
    bulk_pairs_per_s: float
    batch64_pairs_per_s: float
    batch64_padding: float
    batch64_micro_batches: float
    graphs: int
    setup_s: float
    min_cosine: float
    bulk_busy: float | None = None
    batch64_busy: float | None = None


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def build(model_dir: Path, device: str, name: str) -> InstructorEncoder:
    from torch.nn.attention import SDPBackend

    variant = VARIANTS[name]
    acceleration.set_row_buckets(variant.buckets)
    encoder_module.FIRST_CHUNK_PAIRS = variant.first_chunk
    settings = Settings.from_sources({"warmup": False, "packed_stream": variant.stream, **variant.overrides},
                                     environ={})
    encoder = InstructorEncoder(model_dir, settings, device)
    fast = encoder._accelerated
    if fast is not None:
        if variant.backends is not None:
            fast.attention_backends = [getattr(SDPBackend, b) for b in variant.backends]
        print(f"  {name}: {'packed streams' if fast.streams else 'padded micro-batches'}", flush=True)
    encoder.warmup()
    return encoder


def time_variant(encoder: InstructorEncoder, name: str, pairs: list[tuple[str, str]], items: list[TokenizedPair],
                 repeats: int, setup_s: float, reference: np.ndarray | None) -> tuple[VariantResult, np.ndarray]:
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    encoder.encode(pairs)
    bulk = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        vectors = encoder.encode(pairs).vectors
        bulk.append(time.perf_counter() - started)
    batches = [items[i:i + 64] for i in range(0, len(items), 64)]
    for batch in batches:
        encoder.embed(batch)
    dynamic = []
    slots = tokens = micro = 0
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        for batch in batches:
            stats = encoder.embed(batch).stats
            tokens += stats.tokens
            micro += stats.micro_batches
        dynamic.append(time.perf_counter() - started)
    fast = encoder._accelerated
    slot_fn = fast.compute_slots if fast is not None else encoder_module.padded_slots
    for batch in batches:  # tokens the 64-pair calls really computed (graph buckets included)
        lengths = [len(i.input_ids) for i in batch]
        if fast is not None and fast.streams:
            slots += acceleration.stream_bucket(sum(lengths)) if fast.use_graphs else sum(lengths)
            continue
        plan = plan_micro_batches(lengths, encoder.settings.max_batch_tokens, encoder.settings.max_batch_rows,
                                  encoder.overhead_tokens, slot_fn)
        for rows in plan:
            slots += int(slot_fn(max(lengths[i] for i in rows), np.array([len(rows)]))[0])
    result = VariantResult(
        name, len(pairs) / statistics.median(bulk), len(items) / statistics.median(dynamic),
        1 - tokens / repeats / slots, micro / repeats / len(batches),
        0 if fast is None else len(fast._graphs) + len(fast._stream_graphs), setup_s,
        1.0 if reference is None else min_cosine(vectors, reference))
    if encoder.device.type == "cuda":
        result.bulk_busy = gpu_busy(lambda: encoder.encode(pairs))
        result.batch64_busy = gpu_busy(lambda: [encoder.embed(batch) for batch in batches])
    return result, vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="large", help="model shape (default: large)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", type=int, default=4096, help="workload pairs (default: 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default: 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"encoder variants, first is the reference ({', '.join(VARIANTS)})")
    parser.add_argument("--profile", default="default,padded",
                        help="variants to profile kernel by kernel (the first also measures the ceilings and the "
                             "attention kernels; default: default,padded; '' for none)")
    parser.add_argument("--flex", action="store_true",
                        help="also time FlexAttention on the bulk shape (compiles it: tens of seconds)")
    parser.add_argument("--out", type=Path, help="folder for kernel tables and traces")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(tempfile.gettempdir()) / "instructor-bench" / args.shape
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir)
    shape = SHAPES[args.shape]
    pairs = make_pairs(args.pairs)
    print(f"{args.shape} on {results.card_description(args.device)}; {results.software()}", flush=True)

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    profiled = {n.strip() for n in args.profile.split(",") if n.strip()}
    started = time.perf_counter()
    encoder = build(model_dir, args.device, names[0])
    setup_s = time.perf_counter() - started
    items = encoder.tokenize(pairs)
    table: list[VariantResult] = []
    reference: np.ndarray | None = None
    for index, name in enumerate(names):
        if index:
            encoder = None
            if on_cuda:
                torch.cuda.empty_cache()
            started = time.perf_counter()
            try:
                encoder = build(model_dir, args.device, name)
            except Exception as exc:
                print(f"variant {name} failed to build: {exc!r}", flush=True)
                continue
            setup_s = time.perf_counter() - started
        if on_cuda and name in profiled:
            try:
                profile_section(encoder, items, shape, args.out, name, first=not table, flex=args.flex)
            except Exception:  # the variant timings must still run
                traceback.print_exc()
        try:
            with torch.inference_mode():
                result, vectors = time_variant(encoder, name, pairs, items, args.repeats, setup_s, reference)
        except Exception:  # one broken variant must not lose the others' figures
            traceback.print_exc()
            continue
        if reference is None:
            reference = vectors
        table.append(result)
        print(f"  {name}: bulk {result.bulk_pairs_per_s:.0f}, 64-pair {result.batch64_pairs_per_s:.0f} pairs/s",
              flush=True)
    rows = [[r.name, round(r.bulk_pairs_per_s), round(r.batch64_pairs_per_s), f"{100 * r.batch64_padding:.1f}%",
             f"{r.batch64_micro_batches:.2f}", r.graphs, f"{r.setup_s:.1f}", f"{r.min_cosine:.6f}",
             _share(r.bulk_busy), _share(r.batch64_busy)] for r in table]
    print(results.markdown_table(["variant", "bulk pairs/s", "64-pair pairs/s", "64-pair padding (buckets)",
                                  "micro-batches per 64", "graphs", "setup s", "min cos vs first",
                                  "GPU busy bulk", "GPU busy 64-pair"], rows))
    return 0


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def profile_section(encoder: InstructorEncoder, items: list[TokenizedPair], shape: Any, out: Path | None,
                    name: str, first: bool, flex: bool) -> None:
    if first:
        print(results.markdown_table(["ceiling", "measured"], ceilings()), flush=True)
    batch = bulk_batch(encoder, items)
    length = max(len(i.input_ids) for i in batch)
    real = sum(len(i.input_ids) for i in batch)
    with torch.inference_mode():
        bulk_rows, bulk_kernels, bulk_wall = kernel_profile(lambda: encoder._forward(batch), f"{name}_bulk", out)
        flops = sum(len(i.input_ids) * shape.flops_per_token(len(i.input_ids)) for i in batch)
        b64 = items[:64]
        b64_rows, b64_kernels, b64_wall = kernel_profile(lambda: encoder.embed(b64), f"{name}_batch64", out)
        flops64 = sum(len(i.input_ids) * shape.flops_per_token(len(i.input_ids)) for i in b64)
        plan_s = statistics.median(
            [timed_plan(encoder, [len(i.input_ids) for i in b64]) for _ in range(20)])
    header = ["call", "kernels", "ms", "share", "launches"]
    print(results.markdown_table(header, bulk_rows + b64_rows))
    print(f"bulk micro-batch {len(batch)} rows x {length} ({real} real tokens): kernels {1000 * bulk_kernels:.2f}"
          f" ms = {100 * flops / bulk_kernels / results.BF16_CEILING_FLOPS:.1f}% of the bf16 ceiling, wall "
          f"{1000 * bulk_wall:.2f} ms (eager)")
    print(f"64-pair embed: kernels {1000 * b64_kernels:.2f} ms = "
          f"{100 * flops64 / b64_kernels / results.BF16_CEILING_FLOPS:.1f}% of the ceiling, wall "
          f"{1000 * b64_wall:.2f} ms ({100 * flops64 / b64_wall / results.BF16_CEILING_FLOPS:.1f}%), "
          f"planner alone {1000 * plan_s:.2f} ms", flush=True)
    if first:
        with torch.inference_mode():
            table = attention_table(encoder, batch, flex)
            print(results.markdown_table(["attention", "shape", "us", "TFLOP/s"], table), flush=True)


def timed_plan(encoder: InstructorEncoder, lengths: list[int]) -> float:
    fast = encoder._accelerated
    slots = fast.compute_slots if fast is not None else encoder_module.padded_slots
    started = time.perf_counter()
    plan_micro_batches(lengths, encoder.settings.max_batch_tokens, encoder.settings.max_batch_rows,
                       encoder.overhead_tokens, slots)
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
