"""kgclip's command line: a thin veneer over the `retrieval` and `indexer` libraries.

Each command parses options, makes one library call, formats the result and
maps domain errors (KgclipError) to one line on stderr with exit code 1 (2 for
usage). Heavy imports (torch, faiss, open_clip) happen inside commands, so
`kgclip --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from retrieval import __version__
from retrieval.errors import KgclipError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "KGCLIP", "max_content_width": 100}


class KgclipCommandError(click.ClickException):
    """A domain error shown as one line; carries the error's exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


def handle_errors(fn):
    """Map KgclipError to a one-line message; keep tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except KgclipError as e:
            if debug:
                raise
            raise KgclipCommandError(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # `kgclip search ... | head`: the reader left; nothing more to say.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except Exception as e:  # a bug: one line unless --debug, which shows the traceback
            if debug:
                raise
            raise KgclipCommandError(
                f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                "(rerun with --debug for the traceback)"
            ) from None

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="kgclip")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
@click.pass_context
def main(ctx, debug, quiet):
    """kgclip: text-to-image search with knowledge-graph query expansion.

    Build an index over a folder of images, then search it from the terminal:

    \b
        kgclip build ~/Pictures -i pics.kgc
        kgclip search pics.kgc "a dog catching a frisbee"

    Results go to stdout, progress and logs to stderr.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@handle_errors
def models(fmt):
    """List the model spec families (no weights are loaded)."""
    from retrieval.encoders import list_encoders

    rows = list_encoders()
    if fmt == "json":
        echo_json(rows)
        return
    width = max(len(r["example"]) for r in rows)
    for r in rows:
        alias = f" (aliases: {r['aliases']})" if r["aliases"] else ""
        click.echo(f"{r['example']:<{width}}  {r['description']}{alias}")


if __name__ == "__main__":
    main()
