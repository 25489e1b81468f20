"""Record InstructorEmbedding 1.0.1's vectors for the tiny models: writes tests/reference/fixture.json.

Runs ONLY in the reference environment (tests/reference/.venv-ref: InstructorEmbedding 1.0.1,
sentence-transformers 2.2.2, transformers 4.x); build_reference.sh sets it up and calls this.
The fixture is committed: CI never rebuilds the old stack, it compares the server's vectors to this file.

For each model, all pairs go through ONE ``INSTRUCTOR.encode`` call (mixed instructions, sorted by
length and cut into batches of 32 by 1.0.1 itself), and the plain strings through a second call.
Per row it also records what 1.0.1 computed on the way: the instruction length k that it pools out,
and the token counts of the joined string before and after truncation.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # cases.py
sys.path.insert(0, str(HERE.parent))  # tiny_models.py (for sha256_files)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models are local folders; never reach for the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import cases  # noqa: E402
from tiny_models import SHORT_MAX_SEQ_LENGTH, SHORT_NAME, sha256_files  # noqa: E402

SIGNIFICANT_DIGITS = 8
STACK_PACKAGES = ("InstructorEmbedding", "sentence-transformers", "transformers", "tokenizers", "torch",
                  "huggingface_hub", "numpy")  # fmt: skip
# The model files' bytes depend on these (spiece.model on the trainer, weights on torch/safetensors):
# where CI's sha256 check fails, compare its versions with the ones recorded here.
MODEL_BUILD_PACKAGES = ("sentencepiece", "torch", "safetensors")


def _round(values: Any) -> list[float]:
    return [float(f"{float(v):.{SIGNIFICANT_DIGITS}g}") for v in values]


def _joined(instruction: str, text: str) -> str:
    # Exactly 1.0.1: INSTRUCTOR_Transformer.tokenize strips the text, joins with '' and the str branch
    # strips the joined string again (do_lower_case is false in every model here).
    return "".join([instruction, text.strip()]).strip()


def pair_row_info(model: Any, instruction: str, text: str) -> dict[str, Any]:
    """What 1.0.1 computes for one pair, read off its own tokenize(), plus untruncated counts."""
    features = model.tokenize([[instruction, text]])  # 1.0.1's code path: same truncation, same k
    tokenizer = model.tokenizer
    joined_ids = tokenizer(_joined(instruction, text), truncation=False)["input_ids"]
    instruction_ids = tokenizer(instruction.strip(), truncation=False)["input_ids"]
    k = int(features["context_masks"][0])
    used = int(features["attention_mask"][0].sum())
    return {
        "k": k,
        "instruction_tokens": len(instruction_ids),  # with </s>, before truncation
        "joined_tokens": len(joined_ids),  # with </s>, before truncation
        "joined_tokens_used": used,  # after truncation at max_seq_length
        "pooled_tokens": max(used - k, 0),
        # False where the instruction's last tokens merge with the text's: the k pooled-out positions
        # then are not the instruction's tokens.
        "instruction_prefix_aligned": joined_ids[:k] == instruction_ids[:k],
    }


def text_row_info(model: Any, text: str) -> dict[str, Any]:
    features = model.tokenize([text])
    return {
        "tokens": len(model.tokenizer(text.strip(), truncation=False)["input_ids"]),
        "tokens_used": int(features["attention_mask"][0].sum()),
    }


def run_model(model: Any) -> dict[str, Any]:
    """Encode every case with one loaded INSTRUCTOR; ``model.max_seq_length`` as currently set."""
    pair_vectors = model.encode(cases.pairs_as_lists())  # ONE call: mixed instructions, 1.0.1's batching
    text_vectors = model.encode([c.text for c in cases.TEXTS])
    pairs = {}
    for case, vector in zip(cases.PAIRS, pair_vectors, strict=True):
        pairs[case.id] = {**pair_row_info(model, case.instruction, case.text), "vector": _round(vector)}
    texts = {}
    for tcase, vector in zip(cases.TEXTS, text_vectors, strict=True):
        texts[tcase.id] = {**text_row_info(model, tcase.text), "vector": _round(vector)}
    rejected = {}
    for case in cases.PAIRS_1_0_1_REJECTS:
        info = pair_row_info(model, case.instruction, case.text)
        try:
            model.encode([[case.instruction, case.text]])
        except Exception as exc:  # 1.0.1 signals this with a bare assert; record what it raised
            info["error"] = type(exc).__name__
        else:
            raise RuntimeError(f"1.0.1 was expected to fail on {case.id} but returned a vector")
        rejected[case.id] = info
    return {
        "max_seq_length": model.max_seq_length,
        "pairs": pairs,
        "texts": texts,
        "rejected_pairs": rejected,
    }


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        out[name] = importlib.metadata.version(name)
    return out


def _dump(doc: dict[str, Any]) -> str:
    """Pretty JSON with each vector on one line (small, diff-friendly); ASCII-escaped so that
    invisible characters in the cases (U+0085, U+200B, NBSP) stay visible in the file."""
    text = json.dumps(doc, indent=1, ensure_ascii=True)
    number = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    vector = re.compile(rf"\[\n\s+({number}(?:,\n\s+{number})*)\n\s*\]")
    return vector.sub(lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="folder built by tests/tiny_models.py")
    parser.add_argument("--out", type=Path, default=HERE / "fixture.json", help="default: %(default)s")
    args = parser.parse_args(argv)

    import torch
    from InstructorEmbedding import INSTRUCTOR

    torch.manual_seed(0)  # nothing here is random at inference; belt and braces
    model_dirs = sorted(p for p in args.models.iterdir() if (p / "modules.json").is_file())
    if not model_dirs:
        raise SystemExit(f"run_reference.py: no models under {args.models} (run tests/tiny_models.py first)")
    models: dict[str, Any] = {}
    for model_dir in model_dirs:
        model = INSTRUCTOR(str(model_dir), device="cpu")
        entry: dict[str, Any] = {"files_sha256": sha256_files(model_dir), "encode": run_model(model)}
        if model_dir.name == SHORT_NAME:
            # 1.0.1 ignores sentence_bert_config.json's max_seq_length (hard-codes 512); a user who sets
            # it on the loaded model does get truncation there, with k computed under the same limit.
            model.max_seq_length = SHORT_MAX_SEQ_LENGTH
            entry[f"encode_with_max_seq_length_{SHORT_MAX_SEQ_LENGTH}"] = run_model(model)
        models[model_dir.name] = entry
        print(f"run_reference.py: {model_dir.name}: {len(cases.PAIRS)} pairs, {len(cases.TEXTS)} texts")

    doc = {
        "about": "Vectors of InstructorEmbedding 1.0.1 INSTRUCTOR.encode for the tiny test models "
        "(tests/tiny_models.py) on tests/reference/cases.py. Made by tests/reference/build_reference.sh.",
        "reference_stack": _versions(STACK_PACKAGES),
        "model_build_stack": _versions(MODEL_BUILD_PACKAGES),
        "rounding": f"vectors rounded to {SIGNIFICANT_DIGITS} significant digits",
        "token_counts": "include </s>; *_used: after truncation at max_seq_length; k: positions pooled out",
        "cases": {
            "pairs": [c._asdict() for c in cases.PAIRS],
            "texts": [c._asdict() for c in cases.TEXTS],
            "rejected_pairs": [c._asdict() for c in cases.PAIRS_1_0_1_REJECTS],
        },
        "models": models,
    }
    args.out.write_text(_dump(doc), encoding="utf-8")
    print(f"run_reference.py: wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
