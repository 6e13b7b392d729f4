"""Hostile-index trials (issue 22): what an untrusted index folder can do to the machine that opens it.

    python -m benchmarks.hostile_index                 # every kind (a few minutes on 2 cores)
    python -m benchmarks.hostile_index --quick         # a handful of kinds
    python -m benchmarks.hostile_index --kinds fifo-faiss,nan-vector --keep /tmp/hb
    python -m benchmarks.reliability --hostile ...     # the same, from the reliability entry point

One small index is built with the ``fake:v1`` encoder (HNSW image index, captions, a subfolder) plus a
tiny user KG. Each kind (:mod:`benchmarks.hostile_index_kinds`) copies it into its own temp folder,
mutates the copy, and runs ``kgclip`` commands on it as subprocesses, each measured and judged:

- **writes outside**: nothing in the trial folder but the index changes (a victim file's bytes, mtime
  and mode; no new files; the sources and the KG copy untouched); the base folder is checked at the end
- **hang**: a command still running after ``--timeout`` seconds is killed and counted
- **internal error**: a traceback, "internal error", or death by a signal
- **unclear**: a failing command must print one ``Error:`` line; any command at most 3 stderr lines, no
  Python warnings, no terminal control characters, strict JSON for ``--format json``/``jsonl``
- **items lost**: the store's item count may not drop, except in ``verify --repair``
- **memory and time**: peak RSS of the command (``wait4`` rusage) at most 500 MB, wall time at most
  10 s (the issue's target for files under 10 MB); a watchdog kills a command past ``--kill-mb`` of RSS
  so a runaway allocation cannot take the shared machine

Which kgclip runs: ``$KGCLIP_CMD`` (default ``python -m cli``) with ``$KGCLIP_PYTHONPATH`` (default this
checkout) on PYTHONPATH. Run as root, permission kinds drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH /
CAP_FOWNER from the command so file modes hold; where that is impossible they are reported as not
enforceable, never as passed. Results: benchmarks/results/hostile_index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import hostile_index_kinds  # noqa: F401  (registers the index-folder kinds, in order)
from benchmarks import hostile_index_inputs  # noqa: F401,I001  (then the KG and query kinds)
from benchmarks.fakes import COLOURS
from benchmarks.hostile_index_kit import BUILD, KINDS, READERS, REPAIR, UPDATE, VERIFY_OK, VICTIM_BYTES, Kind, Trial, \
    write_kg
from benchmarks.hostile_index_measure import REPO, TARGET_MB, TARGET_S, can_enforce_modes, child_env, count_items, \
    diff, judge, kgclip_command, run_command, snapshot

RESULTS = REPO / "benchmarks" / "results" / "hostile_index.json"
QUICK = ("lock-symlink-victim", "lockmdb-symlink-victim", "source-emptied", "faiss-truncated", "manifest-bad-types",
         "nan-metadata", "readonly-folder")
CONTROL = [*READERS, REPAIR, VERIFY_OK, UPDATE, BUILD]  # a pristine copy: every command must work


# -- one trial ---------------------------------------------------------------------------------------------------
def fill(arg, t: Trial):
    if isinstance(arg, bytes):
        return arg
    return arg.format(idx=t.idx, root=t.root, kg=t.kg, src=t.src)


def make_trial(name: str, base: Path, work: Path, fresh: bool, bomb_bytes: int, env: dict,
               build: bool = True) -> Trial:
    root = work / "trials" / name
    if root.exists():
        release(root)
    root.mkdir(parents=True)
    t = Trial(root=root, idx=root / "idx", src=base / "src", kg=root / "kg", bomb_bytes=bomb_bytes)
    if fresh:  # the kind changes the sources: an index of the trial's own copy
        shutil.copytree(base / "src", root / "src", symlinks=True)
        t.src = root / "src"
    if fresh and build:
        r = run_command(kgclip_command() + ["-q"] + [fill(a, t) for a in BUILD.args], root, env, work / "io",
                        timeout=120)
        if r["exit"] != 0:
            raise RuntimeError(f"fresh build for {name} failed: {r['stderr'][-800:]!r}")
    else:  # a copy of the base index (also what a fresh kind gets without ``build``, e.g. in a unit test)
        shutil.copytree(base / "idx", t.idx, symlinks=True)
    shutil.copytree(base / "kg", t.kg, symlinks=True)
    t.victim.write_bytes(VICTIM_BYTES)
    return t


def release(root: Path) -> None:
    """Remove a trial folder, restoring write/search permission first (read-only kinds)."""
    for d, dirs, files in os.walk(root):
        for n in dirs:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    os.chmod(root, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def run_trial(k, base: Path, work: Path, opts: dict) -> dict:
    t0 = time.monotonic()
    env = child_env(work, offline=k.offline)
    rec = {"kind": k.name, "family": k.family, "what": k.what, "steps": [], "reasons": []}
    if k.unprivileged and not opts["modes"][0]:
        rec.update(ok=None, outcome="not enforceable", reasons=[opts["modes"][1]])
        return rec
    t = make_trial(k.name, base, work, k.fresh, opts["bomb_bytes"], env)
    try:
        k.setup(t)
        before = snapshot(t.root, skip=t.idx)
        items = count_items(t.idx)
        seen: set[str] = set()
        for step in k.steps:
            argv = kgclip_command() + ["-q"] + [fill(a, t) for a in step.args]
            res = run_command(argv, t.root, env, work / "io", timeout=opts["timeout"],
                              stdin=t.root / step.stdin if step.stdin else None, as_limit_mb=opts["as_limit_mb"],
                              kill_mb=opts["kill_mb"], drop_dac=k.unprivileged and os.geteuid() == 0)
            reasons, counts = judge(step, res, opts["target_mb"], opts["target_s"])
            outside = [c for c in diff(before, snapshot(t.root, skip=t.idx)) if c not in seen]
            seen.update(outside)
            if outside:
                reasons.append("wrote outside the index: " + ", ".join(outside[:4]))
            items0, items = items, count_items(t.idx)  # a loss counts against the command that caused it
            lost = max(0, items0 - (items if items is not None else 0)) if items0 is not None else 0
            if lost and step.keeps_items:
                reasons.append(f"{lost} of {items0} items lost" if items is not None else "store no longer readable")
            err = res["stderr"].decode("utf-8", "replace").strip().splitlines()
            rec["steps"].append({
                "command": step.name(), "argv": ["kgclip", "-q"] + [a if isinstance(a, str) else repr(a)
                                                                    for a in step.args],
                "exit": res["exit"], "timed_out": res["timed_out"], "peak_mb": res["peak_mb"],
                "seconds": res["seconds"], "items_before": items0, "items_after": items,
                "items_lost": lost if step.keeps_items else 0, "repair_dropped": 0 if step.keeps_items else lost,
                "writes_outside": outside, "stderr": [x[:300] for x in err[-3:]], "stdout_bytes": len(res["stdout"]),
                "stdout_head": res["stdout"].decode("utf-8", "replace").splitlines()[:2] if res["exit"] else [],
                "reasons": reasons, **counts})
    finally:
        if not opts["keep"]:
            release(t.root)
    rec["reasons"] = [f"{s['command']}: {r}" for s in rec["steps"] for r in s["reasons"]]
    rec["ok"] = not rec["reasons"]
    rec["outcome"] = "pass" if rec["ok"] else "fail"
    rec["writes_outside"] = sum(len(s["writes_outside"]) for s in rec["steps"])
    rec["hangs"] = sum(s["hangs"] for s in rec["steps"])
    rec["internal_errors"] = sum(s["internal_errors"] for s in rec["steps"])
    rec["memory_kills"] = sum(s["memory_kills"] for s in rec["steps"])
    rec["items_lost"] = sum(s["items_lost"] for s in rec["steps"])
    rec["peak_mb"] = max((s["peak_mb"] for s in rec["steps"]), default=0.0)
    rec["seconds"] = round(time.monotonic() - t0, 2)
    return rec


# -- the base index -----------------------------------------------------------------------------------------------
def make_corpus(src: Path) -> None:
    """Coloured images (the fake encoder names the nearest colour), a subfolder, and a captioned JSONL."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def png(path: Path, colour: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        px = np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(path)

    for c in ("red", "green", "blue", "yellow", "white", "black"):
        png(src / "imgs" / f"{c}.png", c)
    for c in ("purple", "orange", "red"):
        png(src / "imgs" / "sub" / f"{c}2.png", c)
    rows = [("cap/c0.png", "red", "a red cat"), ("cap/c1.png", "blue", "a blue rocket"),
            ("cap/c2.png", "green", "a green dog")]
    for p, c, _ in rows:
        png(src / p, c)
    (src / "cap.jsonl").write_text("".join(json.dumps({"path": p, "caption": cap, "label": c}) + "\n"
                                           for p, c, cap in rows))


def make_base(work: Path) -> Path:
    """work/base: src/ (the corpus), idx/ (an HNSW fake:v1 index with captions), kg/ (a user KG)."""
    base = work / "base"
    make_corpus(base / "src")
    write_kg(base / "kg")
    env = child_env(work)
    t = Trial(root=base, idx=base / "idx", src=base / "src", kg=base / "kg")
    args = [fill(a, t) for a in BUILD.args] + ["--index-type", "hnsw"]
    r = run_command(kgclip_command() + ["-q"] + args, base, env, work / "io", timeout=300)
    if r["exit"] != 0:
        raise RuntimeError(f"base build failed ({r['exit']}): {r['stderr'].decode(errors='replace')[-1500:]}")
    return base


def code_revision() -> str | None:
    path = os.environ.get("KGCLIP_PYTHONPATH", str(REPO)).split(os.pathsep)[0]
    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def summarise(kinds: list[dict], control: dict, base_changes: list[str], seconds: float) -> dict:
    judged = [k for k in kinds if k["ok"] is not None]
    peak = max(judged, key=lambda k: k["peak_mb"], default=None)
    return {
        "kinds": len(kinds), "passed": sum(1 for k in judged if k["ok"]),
        "failed": [k["kind"] for k in judged if not k["ok"]],
        "not_enforceable": [k["kind"] for k in kinds if k["ok"] is None],
        "commands": sum(len(k["steps"]) for k in kinds),
        "writes_outside": sum(1 for k in judged if k["writes_outside"]) + bool(base_changes),
        "hangs": sum(k["hangs"] for k in judged),
        "internal_errors": sum(k["internal_errors"] for k in judged),
        "memory_kills": sum(k["memory_kills"] for k in judged),
        "items_lost": sum(k["items_lost"] for k in judged),
        "max_peak_mb": peak["peak_mb"] if peak else None, "max_peak_kind": peak["kind"] if peak else None,
        "control_ok": control["ok"], "base_changed": base_changes, "seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--kinds", default=None, help="comma-separated kind names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the kinds and exit")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds before a command counts as a hang")
    ap.add_argument("--target-mb", type=float, default=TARGET_MB, help="peak RSS a command may reach (MB)")
    ap.add_argument("--target-s", type=float, default=TARGET_S, help="seconds a command may take (a loaded machine)")
    ap.add_argument("--kill-mb", type=int, default=3072, help="kill a command whose RSS passes this (MB)")
    ap.add_argument("--as-limit-mb", type=int, default=0,
                    help="also cap each command's address space (MB; 0: none; a cap hides allocations as errors)")
    ap.add_argument("--bomb-mb", type=int, default=1024, help="how far the KG gzip bomb inflates")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the trial folders (with --workdir)")
    ap.add_argument("--workdir", type=Path, default=None, help="work here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.list:
        for k in KINDS.values():
            print(f"{k.name:30s} {k.family:9s} {k.what}")
        return 0
    names = list(QUICK) if args.quick else list(KINDS)
    if args.kinds:
        names = [n.strip() for n in args.kinds.split(",") if n.strip()]
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        ap.error(f"unknown kind(s): {', '.join(unknown)} (see --list)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kgclip-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    opts = {"timeout": args.timeout, "as_limit_mb": args.as_limit_mb or None, "kill_mb": args.kill_mb,
            "bomb_bytes": args.bomb_mb << 20,
            "keep": args.keep, "target_mb": args.target_mb, "target_s": args.target_s, "modes": can_enforce_modes()}
    t0 = time.monotonic()
    try:
        base = make_base(work)
        base_before = snapshot(base)
        control = run_trial(Kind("control", "control", "a pristine copy of the base index", lambda t: None,
                                 CONTROL), base, work, opts)
        print(f"control: {control['outcome']} {'; '.join(control['reasons'])}", flush=True)
        results = []
        for i, n in enumerate(names, 1):
            r = run_trial(KINDS[n], base, work, opts)
            results.append(r)
            print(f"[{i}/{len(names)}] {n:30s} {r['outcome']:5s} peak {r.get('peak_mb', 0):5.0f} MB "
                  f"{r.get('seconds', 0):5.1f} s  {'; '.join(r['reasons'])[:300]}", flush=True)
        base_changes = diff(base_before, snapshot(base))
    finally:
        if args.workdir is None:
            release(work)
    summary = summarise(results, control, base_changes, time.monotonic() - t0)
    out = {
        "benchmark": "hostile_index",
        "command": "python -m benchmarks.hostile_index " + " ".join(argv if argv is not None else sys.argv[1:]),
        "kgclip": " ".join(kgclip_command()), "code": code_revision(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "root": os.geteuid() == 0},
        "permissions": opts["modes"][1],
        "targets": {"peak_mb": args.target_mb, "seconds": args.target_s, "hang_timeout_s": args.timeout,
                    "memory_watchdog_mb": args.kill_mb, "address_space_cap_mb": args.as_limit_mb or None,
                    "kg_bomb_mb": args.bomb_mb},
        "summary": summary, "control": control, "kinds": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if summary["passed"] == len(results) - len(summary["not_enforceable"]) and control["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
