"""Write a random-weight INSTRUCTOR model directory of a real shape (base / large / xl), in the hkunlp layout.

The timings of an encoder depend on its shape, not on its weights, so the benchmarks use random weights of the
exact hkunlp T5 configs instead of the real checkpoints (the Hub is unreachable on these machines). Layout:

  config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json, special_tokens_map.json,
  sentence_bert_config.json, modules.json (Transformer at "", 1_Pooling, 2_Dense, 3_Normalize without a folder),
  1_Pooling/config.json (mean), 2_Dense/{config.json, model.safetensors} (d_model -> 768, no bias)

Weights are written in bf16: xl is 5 GB in fp32 and generation must stay fast; every loader upcasts them exactly,
so the fp32 baseline (1.0.1's encode) and the bf16 core see the same numbers. config.json keeps vocab_size
32128 (the real embedding table) although the tokenizer uses fewer ids.

The tokenizer is a real ``tokenizers`` Unigram model with T5's pipeline (Metaspace pre-tokenizer, ``$A </s>``,
<pad>=0, </s>=1, <unk>=2, 100 sentinels): a vocabulary of pseudo-words (one token each, so benchmark texts have
exact token counts; see workload.py), their syllables and single characters (so any text still tokenizes).

Usage: python benchmarks/make_bench_model.py --shape large --out /tmp/bench-large
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

VOCAB_SIZE = 32128  # the real T5 vocabulary (embedding rows); the tokenizer uses a prefix of it
DENSE_OUT = 768
EXTRA_IDS = 100
WORD_SEED = 5
N_WORDS = 8000
_SYLLABLE_TEXT = "ka lo mi tra ven sor pel un dor ith ban qui zel mor fa ne sti gra bo lu ar es in ot ul ry ch sh th " \
    "pe ra to vi na de ge mo su ly"
SYLLABLES = tuple(_SYLLABLE_TEXT.split())
# Words the instructions are made of ("Represent the ... for retrieval:"); each is one token too.
_INSTRUCTION_TEXT = (
    "Represent the a an Science Wikipedia Medicine Financial Amazon biomedical legal news tweet title document "
    "sentence question query passage review abstract paper statement summary article product comment code for "
    "retrieval retrieving supporting documents classification clustering duplicate detection relevant answer topic "
    "sentiment of"
)
INSTRUCTION_WORDS = tuple(_INSTRUCTION_TEXT.split())
PUNCTUATION = tuple(":,.;?!()-'\"")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The T5 encoder dimensions of one hkunlp/instructor-* model."""

    name: str
    d_model: int
    d_ff: int
    num_heads: int
    d_kv: int
    num_layers: int

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv

    def flops_per_token(self, seq_len: float) -> float:
        """Multiply-adds x 2 of one token through the encoder at a given attended length."""
        linear = 4 * self.d_model * self.inner + 2 * self.d_model * self.d_ff
        attention = 2 * seq_len * self.inner  # QK^T and AV
        return 2.0 * (linear + attention) * self.num_layers

    def parameters(self) -> int:
        per_layer = 4 * self.d_model * self.inner + 2 * self.d_model * self.d_ff + 2 * self.d_model
        return VOCAB_SIZE * self.d_model + self.num_layers * per_layer + self.d_model + 32 * self.num_heads


SHAPES = {
    "base": Shape("base", 768, 3072, 12, 64, 12),
    "large": Shape("large", 1024, 4096, 16, 64, 24),
    "xl": Shape("xl", 1024, 16384, 32, 128, 24),
}


def vocabulary_words(seed: int = WORD_SEED, n_words: int = N_WORDS) -> list[str]:
    """Deterministic pseudo-words (lower case, 2-4 syllables), distinct, in a stable order."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < n_words:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        words.setdefault(word, None)
    return list(words)


def tokenizer_pieces() -> list[tuple[str, float]]:
    """Unigram (piece, log-probability) list: specials, whole words (cheap), then fallback pieces (dear)."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {piece for piece, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    # A whole word must always beat any split of it: word pieces score -8, the cheapest split costs > -20.
    for word in INSTRUCTION_WORDS:
        add("▁" + word, -8.0)
    for word in vocabulary_words():
        add("▁" + word, -8.0)
    for syllable in SYLLABLES:
        add("▁" + syllable, -12.0)
        add(syllable, -12.0)
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        add("▁" + char, -14.0)
        add(char, -14.0)
    for char in PUNCTUATION:
        add(char, -9.0)
    add("▁", -10.0)
    return pieces


def tokenizer_json() -> str:
    """tokenizer.json with T5's pipeline around a Unigram model; ids are stable for a given vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = tokenizer_pieces()
    vocab = pieces + [(f"<extra_id_{i}>", 0.0) for i in range(EXTRA_IDS - 1, -1, -1)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    specials = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return tokenizer.to_str(pretty=True)


def t5_config(shape: Shape) -> dict[str, Any]:
    """config.json of hkunlp/instructor-<shape> (T5 v1.0 encoder, relu)."""
    return {
        "architectures": ["T5EncoderModel"],
        "d_ff": shape.d_ff,
        "d_kv": shape.d_kv,
        "d_model": shape.d_model,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "relu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "n_positions": 512,
        "num_decoder_layers": shape.num_layers,
        "num_heads": shape.num_heads,
        "num_layers": shape.num_layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def encoder_weights(shape: Shape, seed: int, device: str = "cpu") -> dict[str, Any]:
    """Random bf16 T5 encoder weights with activations of realistic scale.

    Scales follow T5's init except the query: std 2/sqrt(d_model * inner) gives attention logits of std ~2
    (T5 has no 1/sqrt(d_kv)), so softmax is neither uniform nor one-hot, as in a trained model.
    Generated in float32 and rounded once, so every loader sees the same values. ``device="cuda"`` draws them
    on the GPU (seconds instead of a minute for xl; other values than the CPU generator's, same statistics).
    """
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    d, inner, ff = shape.d_model, shape.inner, shape.d_ff

    def randn(*size: int, std: float) -> torch.Tensor:
        return (torch.randn(*size, generator=g, device=device) * std).to(torch.bfloat16).cpu()

    def gain() -> torch.Tensor:
        return (1.0 + torch.randn(d, generator=g, device=device) * 0.1).to(torch.bfloat16).cpu()

    sd: dict[str, torch.Tensor] = {"shared.weight": randn(VOCAB_SIZE, d, std=1.0)}
    for i in range(shape.num_layers):
        p = f"encoder.block.{i}.layer.0."
        sd[p + "SelfAttention.q.weight"] = randn(inner, d, std=2.0 * (d * inner) ** -0.5)
        sd[p + "SelfAttention.k.weight"] = randn(inner, d, std=d**-0.5)
        sd[p + "SelfAttention.v.weight"] = randn(inner, d, std=d**-0.5)
        sd[p + "SelfAttention.o.weight"] = randn(d, inner, std=inner**-0.5)
        if i == 0:  # T5 keeps the relative-position bias in the first block only
            sd[p + "SelfAttention.relative_attention_bias.weight"] = randn(32, shape.num_heads, std=0.5)
        sd[p + "layer_norm.weight"] = gain()
        p = f"encoder.block.{i}.layer.1."
        sd[p + "DenseReluDense.wi.weight"] = randn(ff, d, std=d**-0.5)
        sd[p + "DenseReluDense.wo.weight"] = randn(d, ff, std=ff**-0.5)
        sd[p + "layer_norm.weight"] = gain()
    sd["encoder.final_layer_norm.weight"] = gain()
    return sd


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_model(shape_name: str, out: Path, seed: int = 0, device: str = "cpu") -> Path:
    """Write the model directory ``out`` (replaced if it exists); returns it."""
    import shutil

    import torch
    from safetensors.torch import save_file

    shape = SHAPES[shape_name]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _write_json(out / "config.json", t5_config(shape))
    # encoder.embed_tokens.weight is tied to shared.weight; safetensors refuses the shared copy.
    save_file(encoder_weights(shape, seed, device), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    sentinels = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    _write_json(out / "tokenizer_config.json", {
        "additional_special_tokens": sentinels, "eos_token": "</s>", "extra_ids": EXTRA_IDS,
        "model_max_length": 512, "pad_token": "<pad>", "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>",
    })
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": sentinels, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
    })
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (out / "1_Pooling").mkdir()
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": shape.d_model, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    (out / "2_Dense").mkdir()
    _write_json(out / "2_Dense" / "config.json", {
        "in_features": shape.d_model, "out_features": DENSE_OUT, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    })
    g = torch.Generator().manual_seed(1000 + seed)
    dense = (torch.randn(DENSE_OUT, shape.d_model, generator=g) * shape.d_model**-0.5).contiguous()
    save_file({"linear.weight": dense}, str(out / "2_Dense" / "model.safetensors"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="model shape (default: base)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write (replaced)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="where to draw the weights: cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    make_model(args.shape, args.out, args.seed, args.device)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.shape}: {args.out} ({size / 1e9:.2f} GB, {SHAPES[args.shape].parameters() / 1e6:.0f}M parameters) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
