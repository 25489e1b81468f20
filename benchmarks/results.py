"""Recording benchmark figures: a markdown table on stdout, a dated section in RESULTS.md, keys in results.json.

results.json holds the LATEST value of every key at the top level, and under "_meta" where each came from
(date, card, command), so a figure can always be traced to a RESULTS.md section.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# A measured H100 SXM bf16 dense matrix-product rate (an 8192^3 torch.matmul on random data, ~790 TFLOP/s):
# the arithmetic ceiling the "% of ceiling" columns are relative to.
BF16_CEILING_FLOPS = 790e12


def card_name(device: str) -> str:
    """A short name of the machine that ran a figure: h100, h200, ... or cpu."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device)).lower()
        for short in ("h200", "h100", "a100", "l4", "a10g"):
            if short in name:
                return short
        return name.replace("nvidia", "").strip().split()[0]
    return "cpu"


def card_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def software() -> str:
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"


def command_line() -> str:
    return f"python -m benchmarks.{Path(sys.argv[0]).stem} {shlex.join(sys.argv[1:])}".strip()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if abs(value) < 10:
                return f"{value:,.4f}"
            return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, device: str, body: str, figures: Mapping[str, float],
           results_dir: Path = BENCH_DIR) -> None:
    """Append a dated section to RESULTS.md and merge ``figures`` into results.json."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    card = card_description(device)
    command = command_line()
    section = (f"\n## {now} - {title} - {card}\n\n`{command}`\n\n{software()}\n\n{body.strip()}\n")
    if figures:
        section += "\nresults.json: " + ", ".join(f"`{k}` = {_round(v)}" for k, v in figures.items()) + "\n"
    results_dir.mkdir(parents=True, exist_ok=True)
    md = results_dir / "RESULTS.md"
    if not md.exists():
        md.write_text("# Benchmark results\n\nAppended by the benchmark scripts; newest last. "
                      "results.json holds the latest value of each key.\n", encoding="utf-8")
    with open(md, "a", encoding="utf-8") as handle:
        handle.write(section)
    path = results_dir / "results.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    meta = data.setdefault("_meta", {})
    for key, value in figures.items():
        data[key] = _round(value)
        meta[key] = {"date": now, "card": card, "command": command}
    ordered = {k: data[k] for k in sorted(k for k in data if k != "_meta")}
    ordered["_meta"] = {k: meta[k] for k in sorted(meta)}
    path.write_text(json.dumps(ordered, indent=2) + "\n", encoding="utf-8")


def _round(value: float) -> float:
    return round(float(value), 6) if abs(value) < 10 else round(float(value), 1)
