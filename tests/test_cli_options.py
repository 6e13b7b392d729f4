"""Shared CLI options: global flags in either place, one choice list each, scores explained in --help."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import cli


def _commands(group: click.Group, prefix: str = "kgclip"):
    for name, cmd in group.commands.items():
        yield f"{prefix} {name}", cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix} {name}")


def _leaf_commands():
    return [(p, c) for p, c in _commands(cli.main) if not isinstance(c, click.Group)]


@pytest.mark.parametrize("path,cmd", _leaf_commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_takes_quiet_and_debug(path, cmd):
    opts = {o for p in cmd.params for o in p.opts}
    assert {"-q", "--quiet", "--debug"} <= opts, path


def _flags_seen(args):
    """Run `kgclip ARGS` with `models` swapped for a probe that reports what ctx.obj says."""
    seen = {}

    @cli.command(cli.main, "probe-flags")
    def probe():
        seen.update(quiet=cli.quiet(), debug=cli._flag("debug"))

    try:
        r = CliRunner().invoke(cli.main, args)
        assert r.exit_code == 0, r.output
    finally:
        cli.main.commands.pop("probe-flags")
    return seen


@pytest.mark.parametrize("args,expected", [
    (["probe-flags"], {"quiet": False, "debug": False}),
    (["-q", "probe-flags"], {"quiet": True, "debug": False}),
    (["--quiet", "probe-flags"], {"quiet": True, "debug": False}),
    (["probe-flags", "-q"], {"quiet": True, "debug": False}),
    (["probe-flags", "--quiet"], {"quiet": True, "debug": False}),
    (["--debug", "probe-flags"], {"quiet": False, "debug": True}),
    (["probe-flags", "--debug", "--quiet"], {"quiet": True, "debug": True}),
])
def test_quiet_and_debug_before_or_after_the_subcommand(args, expected):
    assert _flags_seen(args) == expected


def test_quiet_after_the_subcommand_is_accepted_by_build(tmp_path):
    # the reported defect: "No such option '--quiet'"
    r = CliRunner().invoke(cli.main, ["build", str(tmp_path / "missing"), "-i", str(tmp_path / "x.kgc"), "--quiet"])
    assert "No such option" not in r.output


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    args = ["info", str(tmp_path / "no-such-index")]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    r = CliRunner().invoke(cli.main, [*args, "--debug"])
    assert r.exit_code == 1 and not isinstance(r.exception, SystemExit)  # the KgclipError itself propagates


def test_search_help_says_what_a_score_is():
    out = CliRunner().invoke(cli.main, ["search", "--help"], terminal_width=100).output
    text = " ".join(out.split())
    for phrase in ("cosine similarity", "best weighted cosine over the query vectors", "2.5 x a concept bonus",
                   "scores above 1 occur", "fused score in [0, 1]", "reciprocal-rank-fusion"):
        assert phrase in text, phrase


def test_choice_lists_have_one_source():
    # every layer takes its choice lists from retrieval.choices (which imports nothing heavy)
    from indexer.faiss import INDEX_TYPES
    from retrieval import choices
    from retrieval.kg.triples import FORMATS as TRIPLE_FORMATS
    from retrieval.query import EXPAND_MODES, HYBRID_MODES
    from retrieval.render import FORMATS

    assert cli.RESULT_FORMATS is choices.RESULT_FORMATS is FORMATS
    assert cli.EXPAND_MODES is choices.EXPAND_MODES is EXPAND_MODES
    assert cli.HYBRID_MODES is choices.HYBRID_MODES is HYBRID_MODES
    assert cli.INDEX_TYPES is choices.INDEX_TYPES is INDEX_TYPES
    assert cli.TRIPLE_FORMATS is choices.TRIPLE_FORMATS is TRIPLE_FORMATS


def test_shared_options_are_written_once():
    src = open(cli.__file__).read()
    assert src.count('"--device"') == 1 and src.count('"--quiet"') == 1 and src.count('"--kg"') == 1
    assert "find_root().params" not in src  # ctx.obj is the one source of the global flags


def test_quiet_after_the_subcommand_silences_model_preparation_bars():
    from retrieval.encoders import base

    assert CliRunner().invoke(cli.main, ["models", "--quiet"]).exit_code == 0
    assert base._PROGRESS["on"] is False
    assert CliRunner().invoke(cli.main, ["models"]).exit_code == 0  # reset per invocation
    assert base._PROGRESS["on"] is True


def test_subcommand_help_imports_no_numpy():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, cli\nfrom click.testing import CliRunner\n"
            "r = CliRunner().invoke(cli.main, ['search', '--help'])\nassert r.exit_code == 0, r.output\n"
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(cli.__file__).parent).stdout
    assert out.strip() == "False"
