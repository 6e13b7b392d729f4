"""Cold start: `kgclip --help` and a cold `kgclip search`, for one or more checkouts side by side.

    python -m benchmarks.cold_start                                   # this checkout
    python -m benchmarks.cold_start --checkout /work/main --checkout /tmp/old   # two checkouts, alternated
    python -m benchmarks.cold_start --checkout /tmp/old=/opt/py/bin/python --runs 15 --out cold.json

Each ``--checkout`` is ``REPO`` or ``REPO=PYTHON`` (default: the python running this script). Every
command is a fresh process with ``PYTHONPATH=REPO`` started from a neutral folder, so the checkout's
own ``cli.py`` and packages are what runs (``python -c "from cli import main; main()"``, which is what
the ``kgclip`` console script does). Each checkout builds its own ``lite`` index of the demo photos
with its own code (index formats may differ between checkouts). After one discarded warm-up each, the
rounds alternate the checkouts (and their order), so a busy machine slows all of them alike.

Reported per checkout: ``python -c pass`` (interpreter start, for scale), ``kgclip --help`` and
``kgclip search INDEX "a dog" -k 5 --device cpu`` wall times in ms (median, min, max). The target for
``--help`` is 300 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import write_result

REPO = Path(__file__).resolve().parents[1]
KGCLIP = "import sys; sys.argv[0] = 'kgclip'; from cli import main; sys.exit(main())"
HELP_TARGET_MS = 300


def parse_checkout(spec: str) -> tuple[Path, str]:
    """``REPO`` or ``REPO=PYTHON`` -> (repo, python); a missing repo or cli.py is one clear error."""
    repo, _, py = spec.partition("=")
    root = Path(repo).expanduser().resolve()
    if not (root / "cli.py").is_file():
        raise SystemExit(f"--checkout {spec}: no cli.py in {root}")
    return root, py or sys.executable


def _label(root: Path) -> str:
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{root} ({r.stdout.strip()})" if r.returncode == 0 else str(root)


def _env(root: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(root), KGCLIP_OFFLINE="1", HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def _run(py: str, root: Path, args: list[str], cwd: str, timeout: float = 600) -> float:
    """Wall seconds of one fresh ``python ARGS`` process; a failure raises with its stderr."""
    t = time.perf_counter()
    r = subprocess.run([py, *args], cwd=cwd, env=_env(root), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{root}: `{' '.join(args[-6:])}` exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return wall


def _stats(xs: list[float]) -> dict:
    ms = [x * 1000 for x in xs]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1), "n": len(ms)}


def run_cold_start(checkouts: list[tuple[Path, str]], runs: int = 10, workdir: str | None = None,
                   search: bool = True, query: str = "a dog", log=None) -> dict:
    """Time every checkout's cold commands, alternating; returns the result dict (see the module doc)."""
    log = log or (lambda m: None)
    work = Path(workdir or tempfile.mkdtemp(prefix="kgclip-cold-"))
    work.mkdir(parents=True, exist_ok=True)
    neutral = str(work)
    cmds = {"python_pass": lambda root: ["-c", "pass"], "help": lambda root: ["-c", KGCLIP, "--help"]}
    indexes = {}
    if search:
        from indexer.demo import demo_images

        photos = work / "photos"
        demo_images(photos)
        for i, (root, py) in enumerate(checkouts):
            idx = work / f"index{i}"
            if not idx.exists():
                log(f"building the lite index with {root}")
                _run(py, root, ["-c", KGCLIP, "build", str(photos), "-i", str(idx), "--model", "lite",
                                "--device", "cpu"], neutral, timeout=1800)
            indexes[root] = str(idx)
        cmds["search"] = lambda root: ["-c", KGCLIP, "search", indexes[root], query, "-k", "5", "--device", "cpu"]
    walls: dict = {str(root): {name: [] for name in cmds} for root, _ in checkouts}
    for root, py in checkouts:  # warm-up: page cache, .pyc files, model files
        for make in cmds.values():
            _run(py, root, make(root), neutral)
    for r in range(runs):
        order = checkouts if r % 2 == 0 else checkouts[::-1]
        for name, make in cmds.items():
            for root, py in order:
                walls[str(root)][name].append(_run(py, root, make(root), neutral))
        log(f"round {r + 1}/{runs}")
    out = {"benchmark": "cold_start", "runs": runs, "query": query, "help_target_ms": HELP_TARGET_MS,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                       "loadavg_start": os.getloadavg()},
           "checkouts": []}
    for root, py in checkouts:
        row = {"checkout": _label(root), "python": py}
        row.update({name: _stats(xs) for name, xs in walls[str(root)].items()})
        out["checkouts"].append(row)
    return out


def table(res: dict) -> str:
    names = [n for n in ("python_pass", "help", "search") if n in res["checkouts"][0]]
    lines = ["checkout | " + " | ".join(f"{n} median (min) ms" for n in names)]
    for row in res["checkouts"]:
        lines.append(row["checkout"] + " | " + " | ".join(
            f"{row[n]['median_ms']:.0f} ({row[n]['min_ms']:.0f})" for n in names))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", action="append", default=[], metavar="REPO[=PYTHON]",
                    help="a checkout to measure (repeat to compare; default: this one)")
    ap.add_argument("--runs", type=int, default=10, help="alternating rounds after the warm-up")
    ap.add_argument("--no-search", action="store_true", help="time only `--help` (no index is built)")
    ap.add_argument("--workdir", help="keep the photos and indexes here (reused on the next run)")
    ap.add_argument("--out", help="also write the result JSON here")
    a = ap.parse_args(argv)
    checkouts = [parse_checkout(c) for c in a.checkout] or [(REPO, sys.executable)]
    res = run_cold_start(checkouts, runs=a.runs, workdir=a.workdir, search=not a.no_search,
                         log=lambda m: print(m, file=sys.stderr))
    print(table(res))
    if a.out:
        write_result(a.out, res)
    slow = [row["checkout"] for row in res["checkouts"] if row["help"]["median_ms"] > HELP_TARGET_MS]
    if slow:
        print(f"`kgclip --help` over {HELP_TARGET_MS} ms: {', '.join(slow)}", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
