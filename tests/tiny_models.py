"""Tiny INSTRUCTOR-layout test models, built offline and byte-for-byte deterministically.

The Hub is unreachable on the dev/CI machines, so tests use these instead of hkunlp/instructor-*.
They have the same file layout as the real repos (T5EncoderModel at the root, ``1_Pooling``,
``2_Dense``, a ``3_Normalize`` entry in modules.json without a folder, spiece.model + tokenizer.json),
so the same loading code serves both.

Every byte is a pure function of the constants below plus the versions of ``sentencepiece`` (the trainer)
and ``torch`` (``torch.randn`` and ``torch.save``). Nothing depends on ``transformers`` or ``tokenizers``:
the JSON files are written by this module, so the old reference stack (transformers 4.48) and the modern
one (transformers 5) produce identical files, which ``tests/reference/build_reference.sh`` checks.

Usage: ``python tests/tiny_models.py OUT_DIR [--verify]``; OUT_DIR/SHA256SUMS lists every file
(``cd OUT_DIR && sha256sum -c SHA256SUMS``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import struct
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_SEED = 20240601
CORPUS_LINES = 20000
SPM_SEED = 7
SPM_VOCAB_SIZE = 1500  # sentencepiece pieces; the model vocab adds the 100 sentinels
EXTRA_IDS = 100
D_MODEL = 64
D_FF = 128
NUM_LAYERS = 2
NUM_HEADS = 4
D_KV = 16
NUM_BUCKETS = 32
MAX_DISTANCE = 128
DENSE_OUT = 48
SHORT_MAX_SEQ_LENGTH = 32


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: how its encoder differs and which weight format it is saved in."""

    name: str
    feed_forward_proj: str
    weights_file: str  # "pytorch_model.bin" (like hkunlp) or "model.safetensors" (like newer uploads)
    seed: int


SPECS = (
    TinySpec("tiny-instructor-relu", "relu", "pytorch_model.bin", seed=1),
    TinySpec("tiny-instructor-gated", "gated-gelu", "model.safetensors", seed=2),
)
SHORT_NAME = "tiny-instructor-short"  # a copy of relu whose sentence_bert_config.json says max_seq_length 32
SHORT_SOURCE = "tiny-instructor-relu"


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
# Words chosen so that the instructions of the INSTRUCTOR README tokenize into a handful of pieces,
# and so that accents, CJK and emoji are partly in the vocabulary (a few of each stay <unk>).
# Plain word strings split at import: a word per line would bury the file.
_ENGLISH = (  # noqa: SIM905
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an"
    " they you were her she there one all we their has been would more when if no out so said what up its"
    " about into than them can only other new some could time these two may then do first any my now such"
    " like our over man me even most made after also did many before must through back years where much your"
    " way well down should because each just those people how too little state good very make world still"
    " own see men work long get here between both life being under never day same another know while last"
    " might us great old year off come since against go came right used take three"
).split()
_DOMAIN = (  # noqa: SIM905
    "Represent Science title Wikipedia question retrieving supporting documents document sentence retrieval"
    " Medicine statement Financial review query passage classification clustering Amazon customer product"
    " biomedical paper abstract summary tweet news article topic legal contract code function tracking"
    " wearable person environments learning neural network language model embedding reads long science"
    " history reader asks questions works well across topics such medicine finance law biology physics music"
    " art sport travel food weather computing capital France interest rate energy loss matter data machine"
    " university entrance exam line column first second third fourth before after sentinel unknown ok short"
    " text huge following instruction today launch record group unit file next empty zero width joiner"
    " breaking narrow thin space plant stored where food bought broke days son raised benchmark Federal"
    " Reserve Wednesday dominant Western end feudalism term mixed economies precisely describes private"
    " owned enterprises contemporary degree freedom gravity dynamical scalar"
).split()
_SUFFIXES = ("s", "s", "ing", "ed", "er", "ly", "tion", "al")
_ACCENTED = (  # noqa: SIM905
    "café naïve résumé Zürich São Paulo façade crème brûlée Ångström señor über Dvořák Łódź Ærø smörgåsbord"
    " jalapeño Citroën déjà vu Kraków Reykjavík İstanbul"
).split()
_CJK = (
    "机器学习", "自然语言处理", "你好世界", "东京", "北京大学", "日本語のテキスト",
    "한국어 문장", "中文句子", "数据", "模型", "ありがとう", "こんにちは",
)  # fmt: skip
_EMOJI = ("😀", "🚀", "👍", "🎉", "❤️", "🔥", "🤖", "🌍")
_SYLLABLES = "ka lo mi tra ven sor pel un dor ith ban qui zel mor fa ne sti gra bo lu".split()  # noqa: SIM905
_PUNCT = (",", ".", ":", "?", "!", ";", "(", ")", "-", "'", '"')


def training_corpus(seed: int = CORPUS_SEED, n_lines: int = CORPUS_LINES) -> list[str]:
    """Generated 'multilingual-ish' lines; random.Random is stable across CPython 3 versions."""
    rng = random.Random(seed)

    lexicon = _ENGLISH + _DOMAIN
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def word() -> str:
        r = rng.random()
        if r < 0.66:
            w = rng.choice(lexicon)
            if (
                rng.random() < 0.2
            ):  # inflections make the trainer keep sub-word pieces, as real vocabularies do
                w += rng.choice(_SUFFIXES)
        elif r < 0.7:  # pseudo-words: more sub-word material
            w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        elif r < 0.72:  # every ASCII letter in the vocabulary, so unknown English words spell out, not <unk>
            w = "".join(rng.choice(letters) for _ in range(rng.randint(1, 4)))
        elif r < 0.8:
            w = rng.choice(_ACCENTED)
        elif r < 0.87:
            w = rng.choice(_CJK)
        elif r < 0.9:
            w = rng.choice(_EMOJI)
        elif r < 0.95:
            w = str(rng.randint(0, 2024))
        else:
            w = rng.choice(_PUNCT)
        return w.capitalize() if rng.random() < 0.1 else w

    return [" ".join(word() for _ in range(rng.randint(4, 18))) for _ in range(n_lines)]


def train_spiece(lines: list[str]) -> bytes:
    """Train a T5-like SentencePiece unigram model (pad 0, eos 1, unk 2, no bos, nmt_nfkc)."""
    import sentencepiece as spm

    # One thread and a fixed seed: multi-threaded EM or an unseeded sampler makes the pieces drift.
    spm.set_random_generator_seed(SPM_SEED)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="unigram",
        vocab_size=SPM_VOCAB_SIZE,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=0.9995,  # rare characters stay out of the vocabulary: <unk> gets exercised
        normalization_rule_name="nmt_nfkc",  # what T5's spiece.model uses
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    return buf.getvalue()


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = val = 0
    while True:
        c = b[i]
        i += 1
        val |= (c & 0x7F) << shift
        if not c & 0x80:
            return val, i
        shift += 7


def _proto_fields(b: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Minimal protobuf wire-format reader: the modern stack has no protobuf package."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(b, i)
        elif wire == 1:
            value, i = b[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(b, i)
            value, i = b[i : i + n], i + n
        elif wire == 5:
            value, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("spiece.model: expected a length-delimited protobuf field")
    return value


def read_spiece(model: bytes) -> tuple[list[tuple[str, float, int]], bytes]:
    """(piece, score, type) for every piece, and the normalizer's precompiled charsmap."""
    pieces: list[tuple[str, float, int]] = []
    charsmap = b""
    for field, value in _proto_fields(model):
        if field == 1:  # ModelProto.pieces: {1: piece, 2: score (float), 3: type (enum, default NORMAL=1)}
            sub = dict(_proto_fields(_as_bytes(value)))
            score = struct.unpack("<f", _as_bytes(sub[2]))[0] if 2 in sub else 0.0
            piece_type = sub.get(3, 1)
            assert isinstance(piece_type, int)
            pieces.append((_as_bytes(sub[1]).decode("utf-8"), score, piece_type))
        elif field == 3:  # ModelProto.normalizer_spec: {2: precompiled_charsmap}
            charsmap = _as_bytes(dict(_proto_fields(_as_bytes(value))).get(2, b""))
    return pieces, charsmap


def _added_token(token_id: int, content: str) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_json(model: bytes) -> str:
    """tokenizer.json exactly as transformers 5's T5 conversion (``T5TokenizerFast``) saves it.

    Written here rather than by ``save_pretrained`` so that it does not depend on the installed
    transformers/tokenizers (transformers 4.48's converter emits a different pipeline, and the
    modern venv lacks the protobuf package the converter needs). ``verify_tokenizer`` checks that
    it equals the converter's output where transformers 5 is installed. The layout is the classic
    T5 one: Precompiled (nmt_nfkc) normalizer, WhitespaceSplit + Metaspace, ``$A </s>``.
    """
    import base64

    pieces, charsmap = read_spiece(model)
    vocab = [[p, s] for p, s, _ in pieces] + [[f"<extra_id_{i}>", 0.0] for i in range(EXTRA_IDS - 1, -1, -1)]
    n = len(pieces)
    # Control (3) and unknown (2) pieces are special added tokens; sentinels get the ids after the pieces,
    # <extra_id_0> last, as in every T5 checkpoint.
    added = [_added_token(i, p) for i, (p, _, t) in enumerate(pieces) if t in (2, 3)]
    added += [_added_token(n + j, f"<extra_id_{EXTRA_IDS - 1 - j}>") for j in range(EXTRA_IDS)]
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode()},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": dict(metaspace),
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": False},
    }
    # Same bytes as the tokenizers library's own pretty serialisation (indent 2, raw UTF-8).
    return json.dumps(doc, indent=2, ensure_ascii=False)


def _sentinels() -> list[str]:
    return [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]


def tokenizer_config() -> dict[str, Any]:
    """The hkunlp-era tokenizer_config.json (slow class name; AutoTokenizer picks the fast one)."""
    return {
        "additional_special_tokens": _sentinels(),
        "eos_token": "</s>",
        "extra_ids": EXTRA_IDS,
        "model_max_length": 512,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }


def special_tokens_map() -> dict[str, Any]:
    return {
        "additional_special_tokens": _sentinels(),
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }


# --------------------------------------------------------------------------------------------------
# Encoder, pooling, dense
# --------------------------------------------------------------------------------------------------
def t5_config(spec: TinySpec, vocab_size: int) -> dict[str, Any]:
    """config.json like hkunlp's (T5EncoderModel, model_type t5); keys sorted as save_pretrained does."""
    return {
        "architectures": ["T5EncoderModel"],
        "d_ff": D_FF,
        "d_kv": D_KV,
        "d_model": D_MODEL,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": spec.feed_forward_proj,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "num_decoder_layers": NUM_LAYERS,
        "num_heads": NUM_HEADS,
        "num_layers": NUM_LAYERS,
        "pad_token_id": 0,
        "relative_attention_max_distance": MAX_DISTANCE,
        "relative_attention_num_buckets": NUM_BUCKETS,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def encoder_state_dict(spec: TinySpec, vocab_size: int) -> OrderedDict[str, Any]:
    """Random T5 encoder weights from a seeded generator, in a fixed order.

    Generated here (not by transformers' ``_init_weights``, which differs between versions) so both
    stacks get the same tensors. Scales are chosen so that vectors differ clearly between texts: unit
    embeddings, attention logits of std ~2 (T5 has no 1/sqrt(d_kv)), larger relative-position biases
    than T5's init so word order matters, and layer-norm gains around 1 rather than exactly 1.
    """
    import torch

    g = torch.Generator().manual_seed(spec.seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * std).contiguous()

    def gain() -> torch.Tensor:
        return (1.0 + randn(D_MODEL, std=0.2)).contiguous()

    inner = NUM_HEADS * D_KV
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    shared = randn(vocab_size, D_MODEL, std=1.0)
    sd["shared.weight"] = shared
    sd["encoder.embed_tokens.weight"] = shared  # tied, as in every T5 checkpoint
    for i in range(NUM_LAYERS):
        p = f"encoder.block.{i}.layer.0."
        sd[p + "SelfAttention.q.weight"] = randn(inner, D_MODEL, std=0.5 * D_MODEL**-0.5)
        sd[p + "SelfAttention.k.weight"] = randn(inner, D_MODEL, std=D_MODEL**-0.5)
        sd[p + "SelfAttention.v.weight"] = randn(inner, D_MODEL, std=D_MODEL**-0.5)
        sd[p + "SelfAttention.o.weight"] = randn(D_MODEL, inner, std=inner**-0.5)
        if i == 0:  # T5 keeps the relative-position bias in the first block only
            sd[p + "SelfAttention.relative_attention_bias.weight"] = randn(NUM_BUCKETS, NUM_HEADS, std=1.0)
        sd[p + "layer_norm.weight"] = gain()
        p = f"encoder.block.{i}.layer.1."
        if spec.feed_forward_proj.startswith("gated-"):
            sd[p + "DenseReluDense.wi_0.weight"] = randn(D_FF, D_MODEL, std=D_MODEL**-0.5)
            sd[p + "DenseReluDense.wi_1.weight"] = randn(D_FF, D_MODEL, std=D_MODEL**-0.5)
        else:
            sd[p + "DenseReluDense.wi.weight"] = randn(D_FF, D_MODEL, std=D_MODEL**-0.5)
        sd[p + "DenseReluDense.wo.weight"] = randn(D_MODEL, D_FF, std=D_FF**-0.5)
        sd[p + "layer_norm.weight"] = gain()
    sd["encoder.final_layer_norm.weight"] = gain()
    return sd


def dense_state_dict(seed: int) -> OrderedDict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(1000 + seed)
    w = torch.randn(DENSE_OUT, D_MODEL, generator=g, dtype=torch.float32) * D_MODEL**-0.5
    return OrderedDict([("linear.weight", w.contiguous())])


def modules_json() -> list[dict[str, Any]]:
    """hkunlp's modules.json: four modules, the Transformer at the root, Normalize without a folder."""
    return [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]


def pooling_config() -> dict[str, Any]:
    return {
        "word_embedding_dimension": D_MODEL,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def dense_config() -> dict[str, Any]:
    return {
        "in_features": D_MODEL,
        "out_features": DENSE_OUT,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _torch_save(obj: Any, path: Path) -> None:
    import torch

    # Saving into memory first keeps the archive's inner folder name fixed ("archive") whatever the file
    # is called, and torch's zip writer uses no timestamps, so the bytes depend on the tensors only.
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())


def _write_weights(spec: TinySpec, model_dir: Path, sd: OrderedDict[str, Any]) -> None:
    if spec.weights_file == "pytorch_model.bin":
        _torch_save(sd, model_dir / "pytorch_model.bin")  # tied tensors share one storage in the archive
    elif spec.weights_file == "model.safetensors":
        from safetensors.torch import save_file

        # safetensors refuses shared tensors; save_pretrained drops the tied copy the same way.
        tensors = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
        save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        raise ValueError(spec.weights_file)


def build_model(spec: TinySpec, model_dir: Path, spiece: bytes, tok_json: str) -> None:
    """Write one model directory in the hkunlp layout."""
    vocab_size = len(json.loads(tok_json)["model"]["vocab"])
    model_dir.mkdir(parents=True)
    _write_json(model_dir / "config.json", t5_config(spec, vocab_size))
    _write_weights(spec, model_dir, encoder_state_dict(spec, vocab_size))
    _write_json(model_dir / "modules.json", modules_json())
    _write_json(model_dir / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    (model_dir / "spiece.model").write_bytes(spiece)
    (model_dir / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    _write_json(model_dir / "tokenizer_config.json", tokenizer_config())
    _write_json(model_dir / "special_tokens_map.json", special_tokens_map())
    (model_dir / "1_Pooling").mkdir()
    _write_json(model_dir / "1_Pooling" / "config.json", pooling_config())
    (model_dir / "2_Dense").mkdir()
    _write_json(model_dir / "2_Dense" / "config.json", dense_config())
    _torch_save(dense_state_dict(spec.seed), model_dir / "2_Dense" / "pytorch_model.bin")


def sha256_files(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by its POSIX path relative to root, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def build_tiny_models(out_dir: Path) -> dict[str, Path]:
    """Build all tiny models under out_dir (replacing earlier builds); returns {name: directory}.

    Also writes out_dir/SHA256SUMS (``sha256sum -c`` format) covering every model file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spiece = train_spiece(training_corpus())
    tok_json = tokenizer_json(spiece)
    built: dict[str, Path] = {}
    for spec in SPECS:
        model_dir = out_dir / spec.name
        shutil.rmtree(model_dir, ignore_errors=True)
        build_model(spec, model_dir, spiece, tok_json)
        built[spec.name] = model_dir
    short = out_dir / SHORT_NAME
    shutil.rmtree(short, ignore_errors=True)
    shutil.copytree(built[SHORT_SOURCE], short)
    _write_json(
        short / "sentence_bert_config.json", {"max_seq_length": SHORT_MAX_SEQ_LENGTH, "do_lower_case": False}
    )
    built[SHORT_NAME] = short
    sums = {
        f"{name}/{rel}": digest for name in sorted(built) for rel, digest in sha256_files(built[name]).items()
    }
    (out_dir / "SHA256SUMS").write_text("".join(f"{d}  {p}\n" for p, d in sums.items()), encoding="utf-8")
    return built


# --------------------------------------------------------------------------------------------------
# Verification with whatever stack runs this (both stacks in build_reference.sh)
# --------------------------------------------------------------------------------------------------
PROBES = (
    "Represent the Science title:3D ActionSLAM: wearable person tracking in multi-floor environments",
    "café naïve Zürich Dvořák 机器学习 こんにちは 🚀🤖 ∮ unseen ꙮ",
    "tabs\tand\nnewlines  double  spaces",
)


def _f32_scores(doc: dict[str, Any]) -> dict[str, Any]:
    vocab = [[p, struct.unpack("<f", struct.pack("<f", s))[0]] for p, s in doc["model"]["vocab"]]
    return {**doc, "model": {**doc["model"], "vocab": vocab}}


def verify_tokenizer(model_dir: Path) -> None:
    """tokenizer.json loads, agrees with spiece.model and, on transformers 5, with transformers' converter."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    # Nothing is lost or defaulted on load. Scores are compared as float32 (what spiece.model stores):
    # the Rust JSON reader is not round-trip exact, so the last digit of a re-serialised f64 may move.
    assert _f32_scores(json.loads(tok.to_str())) == _f32_scores(json.loads(raw)), (
        "tokenizers re-serialises tokenizer.json differently"
    )
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "spiece.model"))
    for text in PROBES:
        got = tok.encode(text).ids
        want = [*sp.encode(text), 1]
        assert got == want, f"tokenizer.json and spiece.model disagree on {text!r}: {got} != {want}"
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5's T5 conversion from the sentencepiece vocab must give the very same JSON.
        import tempfile

        pieces, charsmap = read_spiece((model_dir / "spiece.model").read_bytes())
        vocab = [(p, s) for p, s, _ in pieces] + [
            (f"<extra_id_{i}>", 0.0) for i in range(EXTRA_IDS - 1, -1, -1)
        ]
        conv = transformers.T5TokenizerFast(
            vocab=vocab, _spm_precompiled_charsmap=charsmap, extra_ids=EXTRA_IDS
        )
        with tempfile.TemporaryDirectory() as tmp:
            conv.save_pretrained(tmp)
            theirs = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        assert theirs == json.loads(raw), "tokenizer.json differs from transformers' T5 conversion"


def verify_model(model_dir: Path) -> None:
    """The encoder loads with no missing or unexpected weights, and texts give clearly different vectors."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    model, info = T5EncoderModel.from_pretrained(str(model_dir), output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "encoder.embed_tokens.weight"]
    assert not missing and not info["unexpected_keys"], f"{model_dir.name}: loading info {info}"
    assert torch.equal(model.encoder.embed_tokens.weight, model.shared.weight), "embeddings not tied"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert tok("</s> <extra_id_3> x")["input_ids"][:2] == [1, len(tok) - 4], "special tokens not parsed"
    batch = tok(list(PROBES), padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    cos = v @ v.T
    off_diag = cos[~torch.eye(len(PROBES), dtype=torch.bool)]
    assert off_diag.max() < 0.95, f"{model_dir.name}: vectors too similar ({off_diag.max():.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="where the model folders and SHA256SUMS go")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also load every model with the installed stack and check it (slower)",
    )
    args = parser.parse_args(argv)
    built = build_tiny_models(args.out_dir)
    for name, path in built.items():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{name}: {path} ({size / 1e6:.2f} MB)")
        if args.verify:
            verify_tokenizer(path)
            verify_model(path)
    if args.verify:
        print("verified with the installed stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
