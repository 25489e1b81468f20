"""The documents as a newcomer reads them: the README's layout map, settings table and links point at what
exists; docs/serving.md documents every config.properties key; no tracked file speaks of this machine."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from handler.settings import Settings
from scripts import torchserve_ctl

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def tracked_files() -> list[str]:
    """`git ls-files`, or every file when this is not a git checkout (e.g. an unpacked release)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]


def section(text: str, title: str) -> str:
    """The body of the markdown section ``## title`` (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def test_the_readme_layout_map_names_only_tracked_paths():
    block = re.search(r"```text\n(.*?)```", section(README, "Layout"), re.S)
    assert block, "the Layout section has no ```text block"
    paths = [line.split()[0] for line in block.group(1).splitlines() if line.strip()]
    files = tracked_files()
    folders = {f.rsplit("/", i)[0] + "/" for f in files for i in range(1, f.count("/") + 1)}
    missing = [p for p in paths if p not in files and p not in folders]
    assert not missing, f"README layout map names paths that are not in the repository: {missing}"
    assert len(paths) >= 10


def test_every_handler_setting_is_documented_in_the_readme():
    table = section(README, "Configuration")
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.M))
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - documented == set(), "settings missing from the README's Configuration table"
    assert documented - fields == set(), "the README documents settings that do not exist"


def test_every_config_properties_key_is_documented_in_docs_serving():
    keys = torchserve_ctl.read_properties(REPO / "config.properties")
    table = section((REPO / "docs" / "serving.md").read_text(encoding="utf-8"), "Configuration reference")
    documented = set(re.findall(r"`([a-z_]+)`", table))
    assert set(keys) - documented == set(), "config.properties keys missing from docs/serving.md"


@pytest.mark.parametrize("doc", ["README.md", "docs/serving.md", "docs/compatibility.md", "tests/reference/README.md"])
def test_relative_links_point_at_existing_files(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if "://" not in t and t[0] != "#"]
    missing = [t for t in targets if not (REPO / doc).parent.joinpath(t).exists()]
    assert not missing, f"{doc} links to missing files: {missing}"


def paths_of_this_machine() -> re.Pattern[str]:
    """What only the machine running the tests has: the folder this checkout sits in, the user's home, pytest's
    temporary folders, the folders beside the checkout (named as a relative path, e.g. notes kept next to it),
    and anyone's home directory. /home/model-server is the container images' own home, defined in docker/."""
    here = [f"{REPO.parent}/", f"{Path.home()}/", f"{Path(tempfile.gettempdir()) / 'pytest'}"]
    beside = [p.name for p in REPO.parent.iterdir() if p.is_dir() and p != REPO]
    alternatives = [re.escape(path) for path in here if path not in ("/", "//")]
    # Only as a path out of the checkout (../name/): a bare "logs/" is this project's own folder, whatever
    # happens to sit beside the checkout.
    alternatives += [rf"\.\./{re.escape(name)}/" for name in beside]
    alternatives.append(r"/home/(?!model-server)[a-z]")
    return re.compile("|".join(alternatives))


def test_no_tracked_file_names_a_path_of_the_machine_it_was_written_on():
    """Absolute paths of a development machine and folders beside the checkout mean nothing to a reader."""
    pattern = paths_of_this_machine()
    hits = []
    for name in tracked_files():
        path = REPO / name
        if name == "tests/test_docs.py" or path.suffix in {".json", ".gz", ".mar"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
