"""Build a TorchServe model archive for an INSTRUCTOR / sentence-transformers model.

Used by scripts/build_archive.sh (run ``build_archive.sh --help`` for the user-facing description).
The archive is self-contained: a TorchServe whose Python environment has the runtime packages
(torch, transformers, sentence-transformers, ...) but not this repository can serve it.

One job a module: spec (the settings and defaults), sources (demo, local directory, Hugging Face Hub),
files (which files to pack, checked by the server's own reader), model_config (model-config.yaml),
packing (torch-model-archiver, the store), cli (the command line).

Archive layout (the same for .mar and no-archive)::

    torchserve_handler.py   the entry point (--handler), imports the package below
    handler/                the whole handler package (TorchServe puts the archive root on sys.path)
    model/                  the sentence-transformers model directory
    model-config.yaml       workers, batching, timeouts and the handler's settings
    MAR-INF/MANIFEST.json
"""

from scripts.model_archive.files import select_files
from scripts.model_archive.packing import build_archive
from scripts.model_archive.sources import DEMO, default_name, locate_demo_model, resolve_model
from scripts.model_archive.spec import ArchiveSpec, BuildError

__all__ = ["DEMO", "ArchiveSpec", "BuildError", "build_archive", "default_name", "locate_demo_model",
           "resolve_model", "select_files"]
