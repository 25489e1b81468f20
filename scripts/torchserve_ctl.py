"""Command line of the TorchServe launcher (the package scripts/launcher/), and its Python API re-exported.

``python3 scripts/torchserve_ctl.py COMMAND --help``; scripts/serve.sh, stop.sh and register.sh call it.
Any Python 3.10+ runs it (standard library only); ``start`` runs TorchServe with the Python that has it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable as the package root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.launcher import *  # noqa: F403 - the Python API, for `from scripts import torchserve_ctl`
from scripts.launcher import __all__  # noqa: F401
from scripts.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
