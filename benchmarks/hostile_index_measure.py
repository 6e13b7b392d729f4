"""How a hostile-index trial measures one ``kgclip`` command, and the bar it is judged against.

:func:`run_command` runs it as a subprocess (its own process group, a hang timeout, an RSS watchdog, peak
RSS from ``wait4``; optionally without the capabilities that let root ignore file modes); :func:`snapshot`
and :func:`diff` see what changed outside the index; :func:`count_items` reads the store's item count
without a lock; :func:`judge` lists why a run fails the bar of issue 22.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_MB, TARGET_S = 500, 10.0  # issue 22: no file under 10 MB makes kgclip use more than 500 MB or 10 s
CAPS_DAC = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")
INTERNAL = ("Traceback (most recent call last)", "internal error")
NO_MEMORY = ("Cannot allocate memory", "MemoryError", "bad_alloc", "std::bad_alloc", "out of memory")


# -- running one command ------------------------------------------------------------------------------------
def kgclip_command() -> list[str]:
    cmd = os.environ.get("KGCLIP_CMD")
    return shlex.split(cmd) if cmd else [sys.executable, "-m", "cli"]


def child_env(work: Path, offline: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KGCLIP_OFFLINE", "HF_HUB_OFFLINE", "KGCLIP_INDEX", "KGCLIP_HOOK_EVENTS")}
    env.update(PYTHONPATH=os.environ.get("KGCLIP_PYTHONPATH", str(REPO)), KGCLIP_PLUGINS="benchmarks.fakes",
               KGCLIP_CACHE=str(work / "cache"), HF_HOME=str(work / "hf-home"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8",
               PYTHONDONTWRITEBYTECODE="1")  # the tree under test stays as it is
    if offline:
        env["KGCLIP_OFFLINE"] = "1"
    return env


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _limits(as_limit_mb: int | None, drop_dac: bool, libc):
    def pre():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if as_limit_mb:
            n = as_limit_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (n, n))
        if drop_dac:  # root keeps uid 0 but loses the capabilities that bypass file modes
            for cap in CAPS_DAC:
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    os._exit(97)

    return pre


def can_enforce_modes() -> tuple[bool, str]:
    """(whether file modes can be enforced on a command, how)."""
    if os.geteuid() != 0:
        return True, "not root: modes hold"
    r = subprocess.run(["sh", "-c", "exit 0"], preexec_fn=_limits(None, True, _libc()))
    if r.returncode == 0:
        return True, "root: commands run without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER"
    return False, "root: permission not enforceable (cannot drop CAP_DAC_OVERRIDE)"


def run_command(argv: list, cwd: Path, env: dict, io_dir: Path, timeout: float = 15.0, stdin: Path | None = None,
                as_limit_mb: int | None = None, kill_mb: int | None = 3072, drop_dac: bool = False) -> dict:
    """Run one command; returns exit code, timed_out, peak_mb (its own max RSS, from wait4), seconds,
    stdout and stderr (bytes). A command past ``timeout`` seconds or ``kill_mb`` of RSS is killed with its
    process group (``mem_killed``): the watchdog keeps a runaway allocation from taking a shared machine,
    where an address-space cap would turn it into a caught error and hide it."""
    import psutil
    io_dir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = io_dir / "stdout", io_dir / "stderr"
    with open(out_p, "wb") as out, open(err_p, "wb") as err, \
            open(stdin if stdin else os.devnull, "rb") as inp:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=inp, stdout=out, stderr=err, start_new_session=True,
                             preexec_fn=_limits(as_limit_mb, drop_dac, _libc() if drop_dac else None))
        timed_out, mem_killed, nap = False, 0, 0.002
        proc = psutil.Process(p.pid)
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            try:
                rss = proc.memory_info().rss >> 20
            except psutil.Error:
                rss = 0
            over = kill_mb is not None and rss > kill_mb
            if over or time.monotonic() - t0 > timeout:
                timed_out, mem_killed = not over, rss if over else 0
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(nap)
            nap = min(nap * 1.5, 0.01)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if not timed_out:  # children the command left behind (decode workers) go with it
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return {"exit": p.returncode, "timed_out": timed_out, "mem_killed": mem_killed,
            "peak_mb": round(ru.ru_maxrss / 1024, 1),
            "seconds": round(seconds, 2), "stdout": out_p.read_bytes(), "stderr": err_p.read_bytes()}


# -- what changed outside the index ---------------------------------------------------------------------
def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Every entry under ``root`` (not following symlinks, ``skip`` left out): type, mode, size, mtime and
    for regular files up to 64 MB a SHA-256."""
    out = {}

    def walk(d: Path):
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            out[str(d.relative_to(root)) + "/"] = ("unreadable", e.errno)
            return
        for e in entries:
            p = Path(e.path)
            if skip is not None and p == skip:
                continue
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode)
                walk(p)
            elif stat.S_ISREG(st.st_mode):
                digest = None
                if st.st_size <= 64 << 20:
                    h = hashlib.sha256()
                    with open(p, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                    digest = h.hexdigest()
                out[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, digest)
            else:
                out[rel] = ("special", st.st_mode)

    walk(root)
    return out


def diff(before: dict, after: dict) -> list[str]:
    changes = [f"new {k}" for k in after if k not in before]
    changes += [f"removed {k}" for k in before if k not in after]
    changes += [f"changed {k}" for k in before if k in after and before[k] != after[k]]
    return sorted(changes)


def count_items(idx: Path) -> int | None:
    """The store's item count, read without a lock file (None when there is no readable store)."""
    import lmdb

    data = idx / "store.lmdb" / "data.mdb"
    try:
        if not stat.S_ISREG(os.stat(data).st_mode):
            return None
        env = lmdb.open(str(idx / "store.lmdb"), readonly=True, lock=False, max_dbs=16, subdir=True)
    except (OSError, lmdb.Error):
        return None
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(b"items", txn=txn, create=False))["entries"])
    except lmdb.Error:
        return None
    finally:
        env.close()


# -- judging one command --------------------------------------------------------------------------------------
def judge(step, res: dict, target_mb: float = TARGET_MB, target_s: float = TARGET_S) -> tuple[list[str], dict]:
    """Reasons this command's run fails the bar (empty: it passed) and the counters it adds."""
    reasons, counts = [], {"hangs": 0, "internal_errors": 0, "memory_kills": int(bool(res.get("mem_killed")))}
    err = res["stderr"].decode("utf-8", "replace")
    out = res["stdout"].decode("utf-8", "replace")
    lines = [x for x in err.splitlines() if x.strip()]
    if res["timed_out"]:
        counts["hangs"] = 1
        return [f"hang: still running after {res['seconds']:.0f} s"], counts
    if res.get("mem_killed"):
        reasons.append(f"killed by the memory watchdog at {res['mem_killed']} MB")
    elif res["exit"] < 0:
        counts["internal_errors"] = 1
        reasons.append(f"killed by signal {-res['exit']}")
    elif any(s in err for s in INTERNAL):
        counts["internal_errors"] = 1
        reasons.append("internal error: " + next((x for x in lines if "error" in x.lower()), lines[-1])[:200])
    if res["exit"] not in step.ok_exit and not res.get("mem_killed"):
        reasons.append(f"exit {res['exit']} (expected {'/'.join(map(str, step.ok_exit))})"
                       + (f": {lines[-1][:160]}" if lines else ""))
    report = not lines and res["stdout"].strip()  # `verify` reports problems on stdout and exits 1
    if res["exit"] > 0 and sum(x.startswith("Error:") for x in lines) != 1 and not report:
        reasons.append("no single 'Error:' line on failure")
    if len(lines) > 3 or len(err) > 2000:
        reasons.append(f"noisy stderr ({len(lines)} lines, {len(err)} bytes)")
    if re.search(r"\b\w+Warning\b", err):
        reasons.append("a Python warning reached stderr")
    if CONTROL_CHARS.search(out) or CONTROL_CHARS.search(err):
        reasons.append("terminal control characters in the output")
    if any(s in err for s in NO_MEMORY):
        reasons.append("ran out of address space (allocation past the cap)")
    if res["peak_mb"] > target_mb:
        reasons.append(f"peak {res['peak_mb']:.0f} MB (target {target_mb:.0f})")
    if res["seconds"] > target_s:
        reasons.append(f"took {res['seconds']:.1f} s (target {target_s:.0f})")
    if len(res["stdout"]) > 1 << 20:
        reasons.append(f"{len(res['stdout']) >> 20} MB on stdout")
    fmt = next((step.args[i + 1] for i, a in enumerate(step.args[:-1]) if a == "--format"), None)
    if res["exit"] == 0 and fmt in ("json", "jsonl"):
        try:
            docs = [strict_json(x) for x in (out.splitlines() if fmt == "jsonl" else [out]) if x.strip()]
            if step.hits is not None and fmt == "json" and len(docs[0].get("hits", [])) != step.hits:
                reasons.append(f"{len(docs[0].get('hits', []))} hits (expected {step.hits})")
        except ValueError as e:
            reasons.append(f"stdout is not strict JSON ({str(e)[:80]})")
    return reasons, counts


def strict_json(text: str):
    def bad(c):
        raise ValueError(f"{c} is not JSON")

    return json.loads(text, parse_constant=bad)
