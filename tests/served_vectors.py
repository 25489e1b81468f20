"""What a served model answers for pairs, and the one tolerance the client tests compare vectors with."""

from __future__ import annotations

import numpy as np

from tests.torchserve_harness import TorchServe


def served(ts: TorchServe, name: str, pairs) -> np.ndarray:
    """The server's own answer for pairs, one direct /predictions request per 200 pairs."""
    out = []
    for start in range(0, len(pairs), 200):
        resp = ts.call("POST", f"/predictions/{name}", {"inputs": [list(p) for p in pairs[start:start + 200]]})
        assert resp.status == 200, resp
        out.extend(resp.body)
    return np.array(out, dtype=np.float32)


def assert_same(got, want) -> None:
    """Equal up to float32 rounding: a pair's vector moves by ~1e-7 with the rows batched beside it on the
    server; any misplaced or wrong vector differs by far more."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, rtol=0, atol=1e-6)
