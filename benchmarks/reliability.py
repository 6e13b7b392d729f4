"""The long reliability run: SIGKILL trials during build, update and FAISS rewrite, each resumed and checked.

    python -m benchmarks.reliability                    # 54 fake:v1 trials + 1 lite trial (~5 min)
    python -m benchmarks.reliability --trials 9 --no-lite   # a quick look
    python -m benchmarks.reliability --hostile [--quick]    # the hostile-index trials (benchmarks/hostile_index.py)

Each trial runs ``kgclip build`` or ``kgclip update`` as a subprocess (the
``fake:v1`` encoder, with benchmarks.reliability_hooks slowing each store
transaction and the FAISS write so a kill can land anywhere), kills it with
SIGKILL at a uniformly random moment (for the ``faiss`` phase: inside the
FAISS file write of an update), probes the index as a reader, resumes with the
same command, and checks: the store equals an uninterrupted run (ids, vectors,
paths, aliases, captions and caption vectors, metadata, failures), `kgclip
verify` exits 0, nothing committed was encoded again, no temp files and no
orphaned decode workers are left, and the reader never saw a half-written
index. Results: benchmarks/results/reliability.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"
PHASES = ("build", "update", "faiss")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--hostile" in argv:  # untrusted index folders (issue 22): their own module, options and results
        from benchmarks.hostile_index import main as hostile

        return hostile([a for a in argv if a != "--hostile"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hostile", action="store_true", help="run the hostile-index trials instead (see --hostile -h)")
    ap.add_argument("--trials", type=int, default=54, help="fake:v1 kill trials (split over build/update/faiss)")
    ap.add_argument("--no-lite", action="store_true", help="skip the one trial with the lite model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the work here (default: a temp dir)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import benchmarks.reliability_hooks  # noqa: F401  (registers the fake encoders in this process)
    from benchmarks.reliability_kit import Scenario

    work = args.workdir or Path(tempfile.mkdtemp(prefix="kgclip-reliability-"))
    cache = str(work / "cache")
    rng = random.Random(args.seed)
    t0 = time.time()
    sc = Scenario(work / "fake", n_folder=30, n_captioned=10, seed=args.seed, commit_delay=0.04, faiss_delay=0.4,
                  cache=cache)
    trials = []
    for i in range(args.trials):
        phase = PHASES[i % 3]
        r = sc.trial(phase, rng, workers=1 if i % 6 == 1 else 0, resume="cli")
        r["model"] = "fake:v1"
        trials.append(r)
        print(f"[{i + 1}/{args.trials}] {phase:6s} kill at {r['kill_at_s']:.2f}s last={r['last_event']!s:14s} "
              f"committed={r.get('committed_items')} ok={r['ok']}" + ("" if r["ok"] else f" {r}"), flush=True)
    lite_error = None
    if not args.no_lite:
        try:
            lite = Scenario(work / "lite", n_folder=8, n_captioned=0, seed=args.seed, model="lite", text_model=None,
                            batch_size=2, commit_delay=0.02, faiss_delay=0.2, cache=cache)
            r = lite.trial("build", rng, resume="cli", atol=1e-4)
            r["model"] = "lite"
            trials.append(r)
            print(f"[lite] build kill at {r['kill_at_s']:.2f}s last={r['last_event']} ok={r['ok']}", flush=True)
        except Exception as e:  # noqa: BLE001 - keep the fake trials' results; say why lite did not run
            lite_error = f"{type(e).__name__}: {str(e)[-400:]}"
            print(f"[lite] not run: {lite_error}", flush=True)

    by_phase = collections.Counter(t["phase"] for t in trials)
    last_events = collections.Counter(f"{t['phase']}:{t['last_event']}" for t in trials)
    summary = {
        "trials": len(trials),
        "killed": sum(t["killed"] for t in trials),
        "ok": sum(t["ok"] for t in trials),
        "failed": [t["trial"] for t in trials if not t["ok"]],
        "by_phase": dict(by_phase),
        "kill_landed_after": dict(sorted(last_events.items())),
        "kills_inside_faiss_write": sum(t["last_event"] in ("faiss-begin", "faiss-renamed") for t in trials),
        "reader_probes": sum(1 for t in trials if "probe" in t) + sum(1 for t in trials if "probe_while_writing" in t),
        "reader_saw_broken_index": sum(1 for t in trials if not t["probe"]["ok"]
                                       or not (t.get("probe_while_writing") or {"ok": True})["ok"]),
        "lost_or_corrupted_items": sum(1 for t in trials if t.get("diffs")),
        "reencoded_committed_items": sum(max(0, t.get("reencoded", 0)) for t in trials),
        "verify_failures": sum(1 for t in trials if t.get("verify_exit") != 0),
        "orphaned_workers": sum(t.get("orphans", 0) for t in trials),
        "temp_files_left_after_resume": sum(len(t.get("temp_files_after_resume", [])) for t in trials),
        "seconds": round(time.time() - t0, 1),
        "lite_error": lite_error,
    }
    out = {
        "command": "python -m benchmarks.reliability " + " ".join(argv),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {"items_per_build": len(sc.ref_build["items"]), "paths": len(sc.ref_build["paths"]),
                  "captions": sc.ref_build["n_caps"], "reference_build_s": round(sc.t_build, 2),
                  "reference_update_s": round(sc.t_update, 2), "commit_delay_s": 0.04, "faiss_delay_s": 0.4},
        "summary": summary,
        "trials": trials,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(summary, indent=1))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["ok"] == summary["trials"] and not lite_error else 1


if __name__ == "__main__":
    sys.exit(main())
