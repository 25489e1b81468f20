"""What the vectors of a run come from: one fixed probe pair's vector, pinned in the run's manifest.

A model name can be re-registered with another model (an archive update) and ``--url`` can point at
another server between a run and its ``--resume``; the model name alone cannot tell. The probe pair is
embedded at the start of every run: a resumed run whose probe vector differs from the stored one would
mix two models in one output, so it is refused. The comparison allows float noise (another GPU kernel,
batch shape), never another model: two different models' vectors of one text are far apart.
"""

from __future__ import annotations

import numpy as np

from instructor_client.batching import encode_pair
from instructor_client.bulk.store import ResumeError
from instructor_client.client import InstructorClient

PROBE_PAIR = ("Represent the sentence for retrieval:", "instructor-embed probe: which model embeds this run")
MIN_COSINE = 0.9999  # float noise stays above 0.99999; another model lands far below


def probe_vector(client: InstructorClient) -> list[float]:
    """The served vector of the probe pair (one request, retried like any other)."""
    return client.embed_request([encode_pair(PROBE_PAIR, 0)]).vectors[0].tolist()


def check_probe(stored: object, now: list[float], where: str) -> None:
    """Refuse (ResumeError) to resume a run whose stored probe vector is not the server's now."""
    if not isinstance(stored, list) or not stored:
        return  # a parts folder of an earlier version pinned nothing: the other manifest keys still hold
    old, new = np.asarray(stored, dtype=np.float64), np.asarray(now, dtype=np.float64)
    if old.shape != new.shape:
        raise ResumeError(f"the server now answers {new.size}-d vectors where the interrupted run stored "
                          f"{old.size}-d ones: another model is served under this name. {where}")
    cosine = float(old @ new / (np.linalg.norm(old) * np.linalg.norm(new) or 1.0))
    if cosine < MIN_COSINE:
        raise ResumeError(f"the server's vector of the probe pair differs from the interrupted run's (cosine "
                          f"{cosine:.6f}): another model (or version) is served under this name, so resuming "
                          f"would mix two models in one output. {where}")
