"""Hostile and malformed request bodies, with the status class each must get.

Shared by the handler unit tests (no server) and the end-to-end tests (real TorchServe, real HTTP),
so every case is checked both where it is parsed and through the Java frontend.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Bodies above config.properties' max_request_size never reach Python: the frontend answers a bare 413.
MAX_REQUEST_SIZE = next(int(line.split("=", 1)[1]) for line in
                        (Path(__file__).resolve().parents[1] / "config.properties").read_text().splitlines()
                        if line.startswith("max_request_size="))

GOOD_PAIR = ["Represent the Science title:", "3D ActionSLAM: wearable person tracking in multi-floor environments"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/json"
    expect: int = 400  # the exact status; 200 marks hostile-looking but valid input

    @property
    def frontend_only(self) -> bool:
        """Cases the Java frontend answers itself (never reach the handler)."""
        return self.expect == 413 and len(self.body) > MAX_REQUEST_SIZE


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def cases(max_pairs: int = 256, max_chars: int = 20000, max_seq_tokens: int = 512) -> list[Case]:
    deep = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        Case("truncated-json", b'{"inputs": ["a", "b"'),
        Case("malformed-json", b'{"inputs": [,]}'),
        Case("single-quotes", b"{'inputs': ['a', 'b']}"),
        Case("trailing-garbage", b'{"inputs": ["a", "b"]} xyz'),
        Case("empty-body", b""),
        Case("whitespace-body", b"  \n "),
        Case("null", b"null"),
        Case("true", b"true"),
        Case("number", b"12345"),
        Case("string", b'"Represent this"'),
        Case("top-level-list", _json([GOOD_PAIR])),
        Case("empty-object", b"{}"),
        Case("inputs-null", _json({"inputs": None})),
        Case("inputs-number", _json({"inputs": 5})),
        Case("inputs-string", _json({"inputs": "a sentence"})),
        Case("inputs-object", _json({"inputs": {"instruction": "a", "sentence": "b"}})),
        Case("inputs-empty", _json({"inputs": []})),
        Case("one-string", _json({"inputs": ["only one"]})),
        Case("three-strings", _json({"inputs": ["a", "b", "c"]})),
        Case("pair-of-one", _json({"inputs": [["a"]]})),
        Case("pair-of-three", _json({"inputs": [["a", "b", "c"]]})),
        Case("number-in-pair", _json({"inputs": [["a", 1]]})),
        Case("null-instruction", _json({"inputs": [[None, "x"]]})),
        Case("object-in-pair", _json({"inputs": [[{"x": 1}, "b"]]})),
        Case("mixed-pair-and-string", _json({"inputs": [["a", "b"], "c"]})),
        Case("string-then-list", _json({"inputs": ["a", ["b"]]})),
        Case("booleans", _json({"inputs": [True, False]})),
        Case("nan", b'{"inputs": [NaN, "x"]}'),
        Case("huge-number", b'{"inputs": [1e999999, "x"]}'),
        Case("deep-nesting", deep),
        Case("deep-nesting-in-pair", b'{"inputs": [["a", ' + b"[" * 20_000 + b"]" * 20_000 + b"]]}"),
        Case("too-many-pairs", _json({"inputs": [["", f"s{i}"] for i in range(max_pairs + 1)]}), expect=413),
        Case("too-many-sentences", _json({"instruction": "", "sentences": ["s"] * (max_pairs + 1)}), expect=413),
        Case("giant-sentence", _json({"inputs": ["", "x" * (max_chars + 1)]}), expect=413),
        Case("giant-instruction", _json({"inputs": ["i" * (max_chars + 1), "x"]}), expect=413),
        # Over max_request_size AND max_pairs_per_request: 413 whether the frontend or the handler sees it.
        Case("over-request-size", _json({"inputs": [["", "y" * (MAX_REQUEST_SIZE // max_pairs)]] * (max_pairs + 1)}),
             expect=413),
        Case("nested-lists-within-request-size", b'{"inputs": [' + b"[]," * 600_000 + b'[]]}', expect=413),
        Case("untruncatable", _json({"inputs": ["", "word " * (max_seq_tokens + 10)], "truncate": False}),
             expect=422),
        Case("invalid-utf8", b'{"inputs": ["a", "\xff\xfe\xfd"]}'),
        Case("lone-surrogate", b'{"inputs": ["\\ud800", "x"]}'),
        Case("utf8-bom", b"\xef\xbb\xbf" + _json({"inputs": GOOD_PAIR}), expect=400),
        Case("truncate-not-bool", _json({"inputs": GOOD_PAIR, "truncate": "yes"})),
        Case("extra-field", _json({"inputs": GOOD_PAIR, "normalize": False})),
        # KServe v1 is spoken on its own route (/v1/models/<name>:predict); on /predictions it is an unknown field.
        Case("kserve-v1-shape", _json({"instances": [GOOD_PAIR]}), expect=400),
        Case("both-forms", _json({"inputs": GOOD_PAIR, "instruction": "x", "sentences": ["y"]})),
        Case("sentences-not-list", _json({"instruction": "x", "sentences": "y"})),
        Case("octet-stream-binary", bytes(range(256)) * 4, content_type="application/octet-stream"),
        Case("text-plain-not-json", b"Represent the title: hello", content_type="text/plain"),
        Case("form-urlencoded", b"inputs=a&sentence=b", content_type="application/x-www-form-urlencoded"),
        Case("multipart-form", b'--XyZ\r\nContent-Disposition: form-data; name="inputs"\r\n\r\nhello\r\n--XyZ--\r\n',
             content_type="multipart/form-data; boundary=XyZ"),
        # Hostile-looking but valid: must be served (200), exactly as InstructorEmbedding would embed them.
        Case("special-tokens-as-text", _json({"inputs": ["</s>", "<pad> <extra_id_0> </s> [CLS] [SEP]"]}),
             expect=200),
        Case("nul-and-controls", _json({"inputs": ["\u0000", "a\u0000b\u0007\u001b[31m"]}), expect=200),
        Case("noncharacters", _json({"inputs": ["\ufffe", "\uffff\U0010ffff"]}), expect=200),
        Case("json-as-text-plain", _json({"inputs": GOOD_PAIR}), content_type="text/plain", expect=200),
        Case("json-charset", _json({"inputs": GOOD_PAIR}), content_type="application/json; charset=utf-8",
             expect=200),
        Case("duplicate-keys", b'{"inputs": ["a", "b"], "inputs": ["Represent:", "c"]}', expect=200),
    ]
