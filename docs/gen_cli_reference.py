"""Write docs/cli-reference.md from every command's `--help` (tests/test_docs.py checks it is current).

    python -m docs.gen_cli_reference          # rewrite docs/cli-reference.md
    python -m docs.gen_cli_reference --check  # exit 1 when the file is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

import cli

OUT = Path(__file__).resolve().parent / "cli-reference.md"
REGENERATE = "python -m docs.gen_cli_reference"
WIDTH = 100

HEADER = f"""# kgclip CLI reference

Generated from each command's `--help` by `{REGENERATE}`; do not edit by hand.
The [README](../README.md) is the guide; this page lists every command and option.
"""


def commands(group: click.Group = cli.main, path: tuple[str, ...] = ()):
    """Every command as (words after `kgclip`, command), the group before its subcommands."""
    yield path, group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from commands(group.commands[name], (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    r = CliRunner().invoke(cli.main, [*path, "--help"], prog_name="kgclip", terminal_width=WIDTH,
                           env={"COLUMNS": str(WIDTH)})
    if r.exit_code != 0:
        raise RuntimeError(f"kgclip {' '.join(path)} --help failed: {r.output}")
    return r.output.rstrip() + "\n"


def render() -> str:
    parts = [HEADER]
    for path, _cmd in commands():
        name = " ".join(("kgclip", *path))
        parts.append(f"\n## {name}\n\n```\n$ {name} --help\n{help_text(path)}```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
