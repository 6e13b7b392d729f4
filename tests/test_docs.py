"""The docs are tested: the CLI reference is generated and current, the README is a short guide whose
examples use real commands and options, and its example output is real."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

import cli
from docs import gen_cli_reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "cli-reference.md").read_text()
MAX_README_WORDS = 2600


def _commands(group: click.Group, prefix: str = "kgclip"):
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


def test_readme_has_the_two_commands():
    assert "make demo" in README and "make test" in README


def test_readme_is_a_short_guide():
    words = len(README.split())
    assert words <= MAX_README_WORDS, (
        f"README.md has {words} words (at most {MAX_README_WORDS}): move detail to docs/ or benchmarks/README.md")


def test_cli_reference_is_current():
    assert gen_cli_reference.render() == REFERENCE, (
        f"docs/cli-reference.md is stale: run `{gen_cli_reference.REGENERATE}` and commit the result")


def test_every_command_and_option_is_in_the_reference():
    missing = []
    for path, cmd in _commands(cli.main):
        assert cmd.help, f"{path} has no help text"
        if f"## {path}\n" not in REFERENCE:
            missing.append(path)
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                longs = [o for o in p.opts + p.secondary_opts if o.startswith("--") and o != "--help"]
                if longs and not any(o in REFERENCE for o in longs):
                    missing.append(f"{path} {longs[0]}")
    assert not missing, f"missing from docs/cli-reference.md (run `{gen_cli_reference.REGENERATE}`): {missing}"


def _readme_command_lines():
    """Every `kgclip ...` command in the README's code blocks: lines after `$ ` in transcripts, and
    bare lines in blocks that hold commands only (a transcript's other lines are output)."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        block_lines = [line.strip() for line in block.splitlines()]
        transcript = any(line.startswith("$ ") for line in block_lines)
        for line in block_lines:
            if transcript:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = line.split(" #", 1)[0].split(" < ", 1)[0].split(" | ", 1)[0].strip()
            if line.startswith("kgclip "):
                lines.append(line)
    return lines


def _resolve(words: list[str]):
    """(command, the words after its name) for `kgclip WORDS`, following groups."""
    cmd, rest = cli.main, list(words)
    global_opts = {o for p in cli.main.params for o in p.opts + p.secondary_opts}
    while isinstance(cmd, click.Group):
        while rest and rest[0] in global_opts:
            rest.pop(0)
        assert rest and rest[0] in cmd.commands, f"unknown command in README: kgclip {' '.join(words)}"
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest


def test_readme_examples_use_real_commands_and_options():
    lines = _readme_command_lines()
    assert len(lines) >= 10, lines  # the guide shows each command with an example
    bad = []
    for line in lines:
        cmd, rest = _resolve(shlex.split(line)[1:])
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts} | {"-h", "--help"}
        for word in rest:
            if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d.*", word):
                if word.split("=", 1)[0] not in known:
                    bad.append(f"{line!r}: {word}")
    assert not bad, f"README examples use options that do not exist: {bad}"


def test_every_top_level_command_has_a_readme_example():
    shown = {shlex.split(line)[1:][0] for line in _readme_command_lines()
             if not shlex.split(line)[1].startswith("-")}
    shown |= {w for line in _readme_command_lines() for w in shlex.split(line)[1:3] if not w.startswith("-")}
    assert set(cli.main.commands) <= shown, set(cli.main.commands) - shown


def test_models_output_in_readme_is_current():
    # a subprocess: the test session registers fake families that users never see
    env = {k: v for k, v in os.environ.items() if k != "KGCLIP_PLUGINS"}
    out = subprocess.run([sys.executable, "-m", "cli", "models"], capture_output=True, text=True, check=True,
                         env=env, cwd=ROOT).stdout
    assert out.strip() in README


def test_kg_link_example_in_readme_is_real():
    res = CliRunner().invoke(cli.main, ["kg", "link", "a mouse eating cheese in the field"])
    assert res.exit_code == 0, res.output
    block = README.split('$ kgclip kg link "a mouse eating cheese in the field"\n', 1)[1].split("```", 1)[0]
    documented = [line.split()[:2] for line in block.strip().splitlines()[1:]]
    actual = [line.split()[:2] for line in res.output.splitlines()[1:]]
    assert documented == actual  # same spans linked to the same WordNet senses


def test_readme_explains_scores():
    text = " ".join(README.split())
    for phrase in ("cosine", "best weighted cosine", "2.5 x", "above 1", "[0, 1]", "RRF"):
        assert phrase in text, phrase
