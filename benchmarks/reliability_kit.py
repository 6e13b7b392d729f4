"""Crash-consistency harness shared by tests/test_reliability_crash.py and benchmarks/reliability.py.

A trial runs ``kgclip build`` or ``kgclip update`` in a subprocess (with
``benchmarks.reliability_hooks`` slowing every store transaction and the FAISS
write so that a kill can land anywhere), kills it with SIGKILL at a random
moment, probes the index like a reader would, resumes the same command, and
compares the whole store with an uninterrupted run: same item ids, vectors,
paths, aliases, captions (and their vectors), metadata and recorded failures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'kgclip'; from cli import main; main()"]


# -- corpus ------------------------------------------------------------------------------------------
def _png(path: Path, seed: int, w: int = 16, h: int = 16) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def make_sources(root: Path, n_folder: int = 30, n_captioned: int = 10, seed: int = 0) -> list[str]:
    """State A: a folder of images (one duplicate, one broken file) and a captioned JSONL manifest."""
    root = Path(root)
    imgs, cap = root / "imgs", root / "cap"
    imgs.mkdir(parents=True, exist_ok=True)
    cap.mkdir(parents=True, exist_ok=True)
    for i in range(n_folder):
        _png(imgs / f"img{i:03d}.png", seed * 10_000 + i)
    shutil.copy(imgs / "img000.png", imgs / "dup of 0.png")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows = []
    for i in range(n_captioned):
        _png(cap / f"c{i:03d}.png", seed * 10_000 + 5_000 + i)
        rows.append({"path": f"cap/c{i:03d}.png", "caption": f"picture number {i}", "label": f"L{i % 3}"})
    if not rows:
        return [str(imgs)]
    (root / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [str(imgs), str(root / "cap.jsonl")]


def mutate_sources(root: Path, seed: int = 0) -> None:
    """State B: add, delete, modify, rename, duplicate, and edit a caption."""
    root = Path(root)
    imgs = root / "imgs"
    names = sorted(p.name for p in imgs.glob("img*.png"))
    os.unlink(imgs / names[1])  # delete
    os.rename(imgs / names[2], imgs / "renamed.png")  # rename: same content, new path
    _png(imgs / names[3], seed * 10_000 + 9_000)  # modify content
    for i in range(max(6, len(names) // 3)):  # add
        _png(imgs / f"new{i:03d}.png", seed * 10_000 + 8_000 + i)
    shutil.copy(imgs / names[4], imgs / "dup of 4.png")
    if not (root / "cap.jsonl").exists():
        return
    rows = [json.loads(x) for x in (root / "cap.jsonl").read_text().splitlines()]
    rows[0]["caption"] = "an edited caption"
    rows.append(dict(rows[1], caption="a second caption"))
    (root / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- running the CLI ---------------------------------------------------------------------------------
def env_for(events: Path | None = None, commit_delay: float = 0.0, faiss_delay: float = 0.0,
            cache: str | None = None) -> dict:
    env = dict(os.environ)
    env.update(KGCLIP_PLUGINS="benchmarks.reliability_hooks", PYTHONPATH=str(REPO), KGCLIP_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if cache:
        env["KGCLIP_CACHE"] = cache
    for k in ("KGCLIP_HOOK_EVENTS", "KGCLIP_HOOK_COMMIT_DELAY", "KGCLIP_HOOK_FAISS_DELAY", "KGCLIP_INDEX"):
        env.pop(k, None)
    if events is not None:
        env["KGCLIP_HOOK_EVENTS"] = str(events)
    if commit_delay:
        env["KGCLIP_HOOK_COMMIT_DELAY"] = str(commit_delay)
    if faiss_delay:
        env["KGCLIP_HOOK_FAISS_DELAY"] = str(faiss_delay)
    return env


def build_args(sources: list[str], index: Path, model: str = "fake:v1", text_model: str = "fake:v1",
               batch_size: int = 3, workers: int = 0) -> list[str]:
    text = ["--text-model", text_model] if text_model else ["--no-captions"]
    return ["-q", "build", *sources, "-i", str(index), "--model", model, *text,
            "--batch-size", str(batch_size), "--workers", str(workers), "--format", "json"]


def update_args(index: Path, batch_size: int = 3, workers: int = 0) -> list[str]:
    return ["-q", "update", str(index), "--batch-size", str(batch_size), "--workers", str(workers),
            "--prune", "--format", "json"]


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def read_events(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written when a kill landed
            pass
    return out


def timed_reference(args: list[str], events: Path, commit_delay: float, faiss_delay: float,
                    cache: str | None = None) -> tuple[dict, float]:
    """Run uninterrupted with the delays; returns (report, seconds from the start event to exit)."""
    if events.exists():
        events.unlink()
    p = run_cli(args, env_for(events, commit_delay, faiss_delay, cache))
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed ({p.returncode}): {p.stderr[-2000:]}")
    ev = read_events(events)
    t0 = next(e["t"] for e in ev if e["event"] == "start")
    t1 = next(e["t"] for e in ev if e["event"] == "exit")
    return json.loads(p.stdout), t1 - t0


def killed_run(args: list[str], env: dict, events: Path, pick_kill, timeout: float = 120,
               probe=None) -> dict:
    """Start the command, SIGKILL it when ``pick_kill(events, now)`` returns True.

    ``probe()`` (optional) runs while the writer is still alive, just before the kill.
    Returns what happened: killed (or finished first), the last event, orphaned workers.
    """
    import psutil

    if events.exists():
        events.unlink()
    p = subprocess.Popen(CLI + args, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    out = {"killed": False, "exit_code": None, "last_event": None, "orphans": 0, "probe_while_alive": None}
    deadline = time.monotonic() + timeout
    children = []
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            ev = read_events(events)
            if pick_kill(ev, time.time()):
                try:
                    children = psutil.Process(p.pid).children(recursive=True)
                except psutil.Error:
                    children = []
                if probe is not None:
                    out["probe_while_alive"] = probe()
                ev = read_events(events)
                p.send_signal(signal.SIGKILL)
                out["killed"] = p.wait() == -signal.SIGKILL
                out["last_event"] = ev[-1]["event"] if ev else None
                out["last_commit_generation"] = next(
                    (e["generation"] for e in reversed(ev) if e["event"] == "commit"), None)
                break
            time.sleep(0.005)
        else:
            p.kill()
            raise RuntimeError("the run neither finished nor reached its kill point in time")
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        out["exit_code"] = p.returncode
        if not out["killed"]:
            ev = read_events(events)
            out["last_event"] = ev[-1]["event"] if ev else None
        out["stderr_tail"] = (p.stderr.read() if p.stderr else "")[-500:]
    # decode workers must not outlive their parent (a killed build leaves no orphans behind)
    alive = [c for c in children if _alive(c)]
    t_end = time.monotonic() + 30  # a worker still importing when its parent died notices at its first read
    while alive and time.monotonic() < t_end:
        time.sleep(0.1)
        alive = [c for c in alive if _alive(c)]
    out["orphans"] = len(alive)
    for c in alive:  # we started them: clean up so the suite leaves nothing running
        try:
            c.kill()
        except Exception:  # noqa: BLE001
            pass
    return out


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_after(seconds: float):
    """A pick_kill: ``seconds`` after the run's start event."""

    def pick(ev, now):
        st = next((e["t"] for e in ev if e["event"] == "start"), None)
        return st is not None and now >= st + seconds

    return pick


def kill_in_faiss(offset: float, file: str = "image.faiss"):
    """A pick_kill: ``offset`` seconds after the FAISS write of ``file`` began."""

    def pick(ev, now):
        st = next((e["t"] for e in ev if e["event"] == "faiss-begin" and os.path.basename(
            e["path"]).startswith(f".{file}.")), None)
        return st is not None and now >= st + offset

    return pick


# -- what a build decided ----------------------------------------------------------------------------
def snapshot_store(index_dir: Path) -> dict:
    """Everything the store holds that a build decides (not generations or progress counters)."""
    from indexer.store import Store, loads, unikey

    s = Store(str(index_dir), readonly=True)
    try:
        with s.read() as t:
            db = s.db
            caps = {unikey(k): bytes(v) for k, v in t.cursor(db=db["capvecs"])}
            items = {unikey(k): loads(v) for k, v in t.cursor(db=db["items"])}
            vecs = {unikey(k): np.frombuffer(bytes(v), np.float32) for k, v in t.cursor(db=db["vecs"])}
            paths = {}
            for k, v in t.cursor(db=db["paths"]):
                p = loads(v)
                paths[bytes(k).decode()] = {
                    "id": p["id"], "size": p["size"], "mtime_ns": p["mtime_ns"], "sha256": p["sha256"],
                    "captions": p.get("captions", []), "meta": p.get("meta", {}),
                    "cap_vecs": [np.frombuffer(caps[c][8:], np.float32) if c in caps else None
                                 for c in p.get("cap_ids", [])],
                    "cap_owners": [int.from_bytes(caps[c][:8], "big") if c in caps else None
                                   for c in p.get("cap_ids", [])],
                }
            fails = {bytes(k).decode(): loads(v)["reason"] for k, v in t.cursor(db=db["fails"])}
            hashes = {bytes(k).decode(): unikey(v) for k, v in t.cursor(db=db["hashes"])}
            next_id = loads(t.get(b"next_id", db=db["meta"]))
            n_caps = len(caps)
    finally:
        s.close()
    return {"items": items, "vecs": vecs, "paths": paths, "fails": fails, "hashes": hashes, "next_id": next_id,
            "n_caps": n_caps}


def compare(a: dict, b: dict, atol: float = 0.0) -> list[str]:
    """Differences between two snapshots (empty = equal); vectors equal within ``atol``."""

    def veq(x, y):
        if x is None or y is None:
            return x is None and y is None
        return x.shape == y.shape and (np.array_equal(x, y) if atol == 0 else np.allclose(x, y, atol=atol))

    diffs = []
    for key in ("items", "fails", "hashes", "next_id", "n_caps"):
        if a[key] != b[key]:
            if isinstance(a[key], dict):
                ks = sorted(set(a[key]) ^ set(b[key]), key=str)[:3] or \
                    [k for k in a[key] if a[key][k] != b[key].get(k)][:3]
                diffs.append(f"{key} differ (e.g. {ks})")
            else:
                diffs.append(f"{key}: {a[key]} != {b[key]}")
    if a["vecs"].keys() != b["vecs"].keys():
        diffs.append("vector ids differ")
    else:
        bad = [i for i in a["vecs"] if not veq(a["vecs"][i], b["vecs"][i])]
        if bad:
            diffs.append(f"{len(bad)} vectors differ (e.g. id {bad[0]})")
    if a["paths"].keys() != b["paths"].keys():
        diffs.append(f"paths differ: {sorted(set(a['paths']) ^ set(b['paths']))[:3]}")
    else:
        for p, x in a["paths"].items():
            y = b["paths"][p]
            plain = [k for k in x if k != "cap_vecs" and x[k] != y[k]]
            if plain:
                diffs.append(f"path {p}: {plain} differ")
            elif len(x["cap_vecs"]) != len(y["cap_vecs"]) or not all(
                    veq(u, v) for u, v in zip(x["cap_vecs"], y["cap_vecs"])):
                diffs.append(f"path {p}: caption vectors differ")
    return diffs


# -- what a reader sees ------------------------------------------------------------------------------
def faiss_ids(index) -> np.ndarray:
    import faiss

    idx = faiss.downcast_index(index) if hasattr(faiss, "downcast_index") else index
    if hasattr(idx, "id_map"):
        return np.sort(faiss.vector_to_array(idx.id_map).astype(np.int64))
    raise TypeError(f"cannot list the ids of {type(idx).__name__}")


def reader_probe(index_dir: Path, query: np.ndarray | None = None, writer_alive: bool = False) -> dict:
    """Open and search the index like a reader; ``ok`` is False only for what a reader must never see.

    A reader may find no index yet (killed before the first manifest) -- a clean
    IndexNotFound. It must never find a FAISS file that does not load, get any
    other error, or get hits that do not hydrate. With no writer alive, the FAISS
    ids it searches must be exactly the store's items at the generation it reports.
    """
    from indexer import open_index
    from indexer.faiss import load
    from retrieval.errors import IndexNotFound, KgclipError

    out = {"ok": True, "state": "searched", "problems": []}
    for name in ("image.faiss", "caption.faiss"):
        p = Path(index_dir) / name
        if p.exists():
            try:
                load(p)
            except Exception as e:  # noqa: BLE001 - a half-written file at the final path
                out["ok"] = False
                out["problems"].append(f"{name} does not load: {e}")
    try:
        ix = open_index(index_dir)
    except IndexNotFound:
        out["state"] = "no index yet"
        return out
    except KgclipError as e:
        out.update(ok=False, state="error")
        out["problems"].append(f"open: {type(e).__name__}: {e}")
        return out
    try:
        n = int(ix._faiss["image"].ntotal)
        if query is None:  # any unit vector will do: the probe checks consistency, not relevance
            query = np.random.default_rng(0).standard_normal((1, ix.dim)).astype(np.float32)
            query /= np.linalg.norm(query)
        k = max(1, min(5, n))
        s, ids = ix.search(query, k=k)
        got = [int(i) for i in ids[0] if i >= 0]
        if len(got) != min(k, n):
            out["problems"].append(f"search returned {len(got)} hits, expected {min(k, n)}")
        if not writer_alive:
            items = ix.get(got)
            if any(x is None for x in items):
                out["problems"].append("a hit does not hydrate")
            from benchmarks.reliability_hooks import item_digest

            have = faiss_ids(ix._faiss["image"])
            n_items, _ = item_digest(ix.store)
            store_ids = np.sort(np.array([i for i, _ in ix.iter_items()], np.int64))
            if ix.generation == ix.store.generation and not np.array_equal(have, store_ids):
                out["problems"].append(f"FAISS holds {len(have)} ids, the store {n_items} items at the same "
                                       "generation")
        out["generation"] = ix.generation
        out["rebuilt"] = list(ix.rebuilt)
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"search: {type(e).__name__}: {e}")
    finally:
        ix.close()
    out["ok"] = out["ok"] and not out["problems"]
    return out


def leftover_temp_files(index_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(index_dir) if n.endswith(".tmp") or n.startswith(".index.json."))


# -- one trial ---------------------------------------------------------------------------------------
class Scenario:
    """Sources in state A and B, a base index over A, and references for a fresh build and an update over B."""

    def __init__(self, work: Path, n_folder: int = 30, n_captioned: int = 10, seed: int = 0,
                 model: str = "fake:v1", text_model: str = "fake:v1", batch_size: int = 3,
                 commit_delay: float = 0.04, faiss_delay: float = 0.4, cache: str | None = None):
        self.work = Path(work)
        self.model, self.text_model, self.batch_size = model, text_model, batch_size
        self.commit_delay, self.faiss_delay, self.cache = commit_delay, faiss_delay, cache
        self.sources = make_sources(self.work / "src", n_folder, n_captioned, seed)
        self.base = self.work / "base"
        p = run_cli(build_args(self.sources, self.base, model, text_model, batch_size), env_for(cache=cache))
        if p.returncode != 0:
            raise RuntimeError(f"base build failed: {p.stderr[-2000:]}")
        mutate_sources(self.work / "src", seed)
        ev = self.work / "ref-events.jsonl"
        self.ref_build_dir = self.work / "ref-build"
        self.ref_build_report, self.t_build = timed_reference(
            build_args(self.sources, self.ref_build_dir, model, text_model, batch_size), ev, commit_delay,
            faiss_delay, cache)
        self.ref_update_dir = self.work / "ref-update"
        shutil.copytree(self.base, self.ref_update_dir)
        self.ref_update_report, self.t_update = timed_reference(
            update_args(self.ref_update_dir, batch_size), ev, commit_delay, faiss_delay, cache)
        self.ref_build = snapshot_store(self.ref_build_dir)
        self.ref_update = snapshot_store(self.ref_update_dir)
        self.base_next_id = snapshot_store(self.base)["next_id"]
        self.query = None
        self.n = 0

    def trial(self, phase: str, rng: random.Random, workers: int = 0, resume: str = "cli",
              atol: float = 0.0) -> dict:
        """One kill trial: phase is 'build', 'update' or 'faiss' (a kill inside the FAISS rewrite of an update)."""
        self.n += 1
        d = self.work / f"trial{self.n:03d}-{phase}"
        ev = self.work / f"events{self.n:03d}.jsonl"
        if phase == "build":
            args = build_args(self.sources, d, self.model, self.text_model, self.batch_size, workers)
            at = rng.uniform(0, 0.9 * self.t_build)  # the tail end would often finish before the kill
            pick = kill_after(at)
            ref, ref_report = self.ref_build, self.ref_build_report
        else:
            shutil.copytree(self.base, d)
            args = update_args(d, self.batch_size, workers)
            ref, ref_report = self.ref_update, self.ref_update_report
            if phase == "update":
                at = rng.uniform(0, 0.9 * self.t_update)
                pick = kill_after(at)
            else:
                at = rng.uniform(0, self.faiss_delay * 1.05)
                pick = kill_in_faiss(at, rng.choice(["image.faiss", "caption.faiss"]) if self.text_model
                                     else "image.faiss")
        q = self.query
        res = {"trial": self.n, "phase": phase, "kill_at_s": round(at, 3), "workers": workers}
        probe_alive = (lambda: reader_probe(d, q, writer_alive=True)) if phase == "faiss" else None
        k = killed_run(args, env_for(ev, self.commit_delay, self.faiss_delay, self.cache), ev, pick,
                       probe=probe_alive)
        res.update(killed=k["killed"], last_event=k["last_event"], orphans=k["orphans"])
        if k["probe_while_alive"] is not None:
            res["probe_while_writing"] = k["probe_while_alive"]
        if not k["killed"] and k["exit_code"] != 0:
            res.update(ok=False, error=f"run failed before the kill: {k['stderr_tail']}")
            return res
        # what survived the kill
        try:
            left = snapshot_store(d)
            res["committed_items"] = len(left["items"])
            new_committed = sum(1 for i in left["items"] if i >= (0 if phase == "build" else self.base_next_id))
        except Exception as e:  # noqa: BLE001 - killed before the store existed
            res["committed_items"], new_committed = 0, 0
            res["store_after_kill"] = type(e).__name__
        res["temp_files_after_kill"] = leftover_temp_files(d) if d.exists() else []
        res["probe"] = reader_probe(d, q)
        # resume
        if resume == "cli":
            p = run_cli(args, env_for(cache=self.cache))
            if p.returncode != 0:
                res.update(ok=False, error=f"resume failed ({p.returncode}): {p.stderr[-600:]}")
                return res
            rep = json.loads(p.stdout)
        else:
            from indexer import build_index, update_index

            quiet = dict(quiet=True, log=lambda s: None, workers=workers, batch_size=self.batch_size)
            if phase == "build":
                rep = build_index(self.sources, d, model=self.model, text_model=self.text_model, **quiet).to_dict()
            else:
                rep = update_index(d, prune=True, **quiet).to_dict()
        res["resumed_added"] = rep["added"]
        # nothing committed is encoded again
        res["reencoded"] = rep["added"] + new_committed - ref_report["added"]
        diffs = compare(snapshot_store(d), ref, atol=atol)
        res["diffs"] = diffs
        if resume == "cli":
            v = run_cli(["verify", str(d)], env_for(cache=self.cache))
            res["verify_exit"] = v.returncode
            res["verify"] = v.stdout.strip().splitlines()[-1] if v.stdout.strip() else v.stderr.strip()
        else:
            from indexer import verify_index

            r = verify_index(d)
            res["verify_exit"] = 0 if r["ok"] else 1
            res["verify"] = "; ".join(r["problems"][:3]) or "ok"
        res["temp_files_after_resume"] = leftover_temp_files(d)
        res["ok"] = (not diffs and res["verify_exit"] == 0 and res["probe"]["ok"] and res["reencoded"] == 0
                     and res["orphans"] == 0 and not res["temp_files_after_resume"]
                     and (res.get("probe_while_writing") or {"ok": True})["ok"])
        shutil.rmtree(d, ignore_errors=True)
        if ev.exists():
            ev.unlink()
        return res
