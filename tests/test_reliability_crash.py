"""Crash consistency: builds and updates killed with SIGKILL at random points, then resumed.

Every trial must end with a store equal to an uninterrupted run (same ids,
vectors, paths, aliases, captions, metadata, failures), ``verify`` passing, no
committed item encoded again, no temp files or orphaned workers left behind,
and a reader that never sees a half-written index (probed right after the
kill, and during the FAISS rewrite while the writer is still alive).

The fast set runs a handful of trials; ``-m slow`` adds a lite-model trial and
a longer series (the full 50+ trial run is ``python -m benchmarks.reliability``).
"""

from __future__ import annotations

import random

import pytest

from benchmarks.reliability_kit import Scenario


def _check(r: dict) -> None:
    detail = {k: r.get(k) for k in ("phase", "kill_at_s", "last_event", "diffs", "verify", "probe", "reencoded",
                                    "orphans", "temp_files_after_resume", "probe_while_writing", "error")}
    assert r["ok"], detail
    assert r["killed"] or r["last_event"] is not None, detail


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return Scenario(tmp_path_factory.mktemp("crash"), n_folder=18, n_captioned=6, commit_delay=0.04,
                    faiss_delay=0.4, cache=str(tmp_path_factory.getbasetemp() / "kgclip-cache"))


def test_reference_runs_are_meaningful(scenario):
    # the references exercise what the trials must preserve: duplicates, failures, captions, update ops
    b, u = scenario.ref_build_report, scenario.ref_update_report
    assert b["duplicates"] >= 2 and b["failures_total"] == 1 and b["captions"] >= 7
    assert u["added"] >= 6 and u["removed"] >= 2 and u["changed"] >= 1 and u["duplicates"] >= 1
    assert len(scenario.ref_build["items"]) == len(scenario.ref_update["items"])
    assert scenario.ref_build["items"] != scenario.ref_update["items"]  # update keeps old ids: not a rebuild


@pytest.mark.parametrize("phase,workers,seed", [("build", 0, 1), ("build", 1, 2), ("update", 0, 3), ("faiss", 0, 4)])
def test_kill_and_resume(scenario, phase, workers, seed):
    r = scenario.trial(phase, random.Random(seed), workers=workers, resume="inproc")
    _check(r)
    if phase == "faiss":
        assert r["last_event"] in ("faiss-begin", "faiss-renamed"), r  # the kill landed inside the rewrite
        assert r["probe_while_writing"]["ok"]


@pytest.mark.slow
def test_many_kill_trials_cli_resume(scenario):
    rng = random.Random(7)
    for i in range(12):
        r = scenario.trial(["build", "update", "faiss"][i % 3], rng, workers=i % 2, resume="cli")
        _check(r)


@pytest.mark.slow
def test_kill_lite_build(tmp_path, tmp_path_factory):
    """One trial with the real offline model: vectors equal within float tolerance (batching differs)."""
    s = Scenario(tmp_path, n_folder=8, n_captioned=0, model="lite", text_model=None, batch_size=2,
                 commit_delay=0.02, faiss_delay=0.2, cache=str(tmp_path_factory.getbasetemp() / "kgclip-cache"))
    r = s.trial("build", random.Random(11), resume="cli", atol=1e-4)
    _check(r)
