"""The hostile-index harness (benchmarks/hostile_index.py) itself: its registry, every kind's mutation,
its measurements, and (slow) a --quick run end to end. Whether kgclip passes the kinds is the benchmark's
job, not this file's."""

from __future__ import annotations

import json
import os
import sys

import pytest

from benchmarks import hostile_index as hi
from benchmarks.hostile_index_kit import KINDS, S, VICTIM_BYTES
from benchmarks.hostile_index_measure import child_env, diff, judge, run_command, snapshot, strict_json


def test_registry_has_at_least_30_kinds_in_every_family():
    assert len(KINDS) >= 30
    assert {k.family for k in KINDS.values()} == {"writes", "dataloss", "resources", "output"}
    for k in KINDS.values():
        assert k.steps and k.what and k.name == k.name.strip()
    assert set(hi.QUICK) <= set(KINDS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    return work, hi.make_base(work)


def test_every_kind_builds_its_mutation(base):
    work, b = base
    env = child_env(work)
    for k in KINDS.values():
        t = hi.make_trial(k.name, b, work, k.fresh, 16 << 20, env, build=False)
        try:
            k.setup(t)
            assert t.victim.read_bytes() == VICTIM_BYTES, k.name
            assert os.path.lexists(t.idx), k.name
        finally:
            hi.release(t.root)
    assert hi.count_items(b / "idx") == 12


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_command_measures_peak_memory_and_cuts_off_hangs(tmp_path):
    env = dict(os.environ)
    r = run_command(_py("b = bytearray(200 << 20); print('ok')"), tmp_path, env, tmp_path / "io")
    assert r["exit"] == 0 and r["stdout"].strip() == b"ok" and r["peak_mb"] >= 190
    r = run_command(_py("import time; time.sleep(30)"), tmp_path, env, tmp_path / "io", timeout=0.5)
    assert r["timed_out"] and r["seconds"] < 10
    r = run_command(_py("b = bytearray(400 << 20); import time; time.sleep(30)"), tmp_path, env, tmp_path / "io",
                    timeout=20, kill_mb=300)
    assert r["mem_killed"] >= 300 and not r["timed_out"]


def test_snapshot_sees_writes_outside(tmp_path):
    (tmp_path / "victim.txt").write_bytes(b"x")
    (tmp_path / "idx").mkdir()
    before = snapshot(tmp_path, skip=tmp_path / "idx")
    (tmp_path / "idx" / "inside").write_bytes(b"fine")
    assert diff(before, snapshot(tmp_path, skip=tmp_path / "idx")) == []
    (tmp_path / "victim.txt").write_bytes(b"")
    (tmp_path / "new").write_bytes(b"")
    assert diff(before, snapshot(tmp_path, skip=tmp_path / "idx")) == ["changed victim.txt", "new new"]


def _res(exit=0, out=b"", err=b"", **kw):
    return {"exit": exit, "timed_out": False, "mem_killed": 0, "peak_mb": 50.0, "seconds": 0.5, "stdout": out,
            "stderr": err, **kw}


def test_judge_flags_what_the_issue_forbids():
    step = S("search", "{idx}", "red", "--format", "json")
    assert judge(step, _res(out=b'{"hits": []}'))[0] == []
    assert judge(step, _res(exit=1, err=b"Error: index.json: not valid JSON\n"))[0] == []
    reasons, counts = judge(step, _res(exit=1, err=b"Error: internal error: KeyError: 'x'\n"))
    assert counts["internal_errors"] == 1 and reasons
    assert judge(step, _res(exit=-11))[1]["internal_errors"] == 1
    assert judge(step, _res(timed_out=True))[1]["hangs"] == 1
    assert any("strict JSON" in r for r in judge(step, _res(out=b'{"x": NaN}'))[0])
    assert any("control" in r for r in judge(step, _res(out=b'{"x": "\x1b]0;t\x07"}'))[0])
    assert any("peak" in r for r in judge(step, _res(out=b"{}", peak_mb=900.0))[0])
    assert any("Error:" in r for r in judge(step, _res(exit=1))[0])
    with pytest.raises(ValueError):
        strict_json('{"a": Infinity}')


@pytest.mark.slow
def test_quick_run_writes_a_complete_result(tmp_path):
    out = tmp_path / "hostile.json"
    hi.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work")])
    d = json.loads(out.read_text())
    s = d["summary"]
    assert s["control_ok"], d["control"]["reasons"]
    assert [k["kind"] for k in d["kinds"]] == list(hi.QUICK) and s["kinds"] == len(hi.QUICK)
    for key in ("writes_outside", "hangs", "internal_errors", "items_lost", "max_peak_mb", "failed"):
        assert key in s
    for k in d["kinds"]:
        assert k["outcome"] in ("pass", "fail", "not enforceable")
        for st in k["steps"]:
            assert isinstance(st["exit"], int) and st["peak_mb"] > 0 and st["seconds"] >= 0
    assert not list((tmp_path / "work" / "trials").iterdir())  # trials clean up after themselves
