"""Every command-line script explains itself (--help with its defaults, before any environment exists) and
refuses an option it does not know."""

from __future__ import annotations

import pytest

from tests.torchserve_harness import run_script

HELP_DEFAULTS = {
    "build_archive.sh": ["(default: demo)", "(default: no-archive)", "(default: 1)", "(default: 16)",
                         "(default: 5)", "(default: 120)", "(default: 600)", "(handler default: auto)"],
    "register.sh": ["(default: 1)", "(default: 600.0)", "key_file.json"],
    "serve.sh": ["(default: demo", "(default: 1)", "(default: 600)", "(default: no-archive)"],
    "stop.sh": ["(default: 60)"],
}


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_every_script_explains_itself_with_defaults(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps to the terminal width
    for default in HELP_DEFAULTS[script]:
        assert default in text, f"{script} --help does not show {default!r}:\n{proc.stdout}"


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_help_works_before_the_environment_exists(script, tmp_path):
    proc = run_script(script, "--help", env={"VENV": str(tmp_path / "no-venv-yet")})
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_an_unknown_option_is_refused(script):
    required = ["--name", "x"] if script == "register.sh" else []
    proc = run_script(script, *required, "--no-such-option")
    assert proc.returncode == 2
    assert "--no-such-option" in proc.stderr
