"""The README documents every command and option, and its example output is real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "kgclip"):
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


def test_readme_has_the_two_commands():
    assert "make demo" in README and "make test" in README


def test_every_command_is_documented_with_help():
    for path, cmd in _commands(cli.main):
        sub = path.split(" ", 1)[1]
        assert cmd.help, f"{path} has no help text"
        # `kgclip kg link` may be written as `kg link` inside the kg section
        assert re.search(rf"(kgclip |`){re.escape(sub)}\b", README), f"{path} is not in README.md"


def test_every_option_is_documented():
    missing = []
    for path, cmd in _commands(cli.main):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                longs = [o for o in p.opts + p.secondary_opts if o.startswith("--") and o != "--help"]
                if longs and not any(o in README for o in longs):
                    missing.append(f"{path} {longs[0]}")
    assert not missing, f"options missing from README.md: {missing}"


def test_models_output_in_readme_is_current():
    # a subprocess: the test session registers fake families that users never see
    env = {k: v for k, v in os.environ.items() if k != "KGCLIP_PLUGINS"}
    out = subprocess.run([sys.executable, "-m", "cli", "models"], capture_output=True, text=True, check=True,
                         env=env, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() in README


def test_kg_link_example_in_readme_is_real():
    res = CliRunner().invoke(cli.main, ["kg", "link", "a mouse eating cheese in the field"])
    assert res.exit_code == 0, res.output
    block = README.split('$ kgclip kg link "a mouse eating cheese in the field"\n', 1)[1].split("\n\n", 1)[0]
    documented = [line.split()[:2] for line in block.splitlines()[1:]]
    actual = [line.split()[:2] for line in res.output.splitlines()[1:]]
    assert documented == actual  # same spans linked to the same WordNet senses
