"""Hostile files: each is indexed correctly or reported with its reason; nothing hangs; exit codes hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import indexer.pipeline as pipeline
import benchmarks.reliability_hooks  # noqa: F401  registers fakehang:v1
from indexer import build_index, open_index, update_index, verify_index
from benchmarks.hostile import kinds, make_hostile_tree
from benchmarks.reliability_kit import REPO, env_for


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """Build the hostile tree with a file deleted and a file growing between the scan and the read."""
    d = tmp_path / "tree"
    cases = make_hostile_tree(d)
    grow = next(c for c in cases if c.name == "grow.png")
    calls = {"n": 0}
    orig = pipeline.iter_sources

    def iter_sources(sources, **kw):
        calls["n"] += 1
        for it in orig(sources, **kw):
            if calls["n"] == 2 and it.key.endswith("/vanish.png"):  # pass 2 feeds the decoder
                os.unlink(it.key)
            if calls["n"] == 2 and it.key.endswith("/grow.png"):
                with open(it.key, "ab") as fh:
                    fh.write(grow.extra["full"][os.path.getsize(it.key): len(grow.extra["full"]) * 8 // 10])
            yield it

    monkeypatch.setattr(pipeline, "iter_sources", iter_sources)
    msgs: list[str] = []
    report = build_index([d], tmp_path / "idx", model="fakehang:v1", text_model=None, workers=1, batch_size=4,
                         timeout_per_file=3, quiet=True, log=msgs.append)
    monkeypatch.setattr(pipeline, "iter_sources", orig)
    return d, cases, report, msgs, tmp_path / "idx"


def test_hostile_tree_each_file_indexed_or_reported(hostile):
    d, cases, report, msgs, idx = hostile
    assert kinds(cases) >= 20
    with open_index(idx) as ix:
        items = {os.path.relpath(it["path"], d): it for _, it in ix.iter_items()}
        aliases = {os.path.relpath(a, d) for it in items.values() for a in it["aliases"]}
        holder = dict(items)
        holder.update({os.path.relpath(a, d): it for it in items.values() for a in it["aliases"]})
        fails = {os.path.relpath(k, d): f["reason"] for k, f in ix.store.iter_failures()}
    for c in cases:
        if c.expect == "indexed":
            assert c.name in holder, (c.kind, fails.get(c.name))
            if c.size:
                assert (holder[c.name]["width"], holder[c.name]["height"]) == c.size, c.kind
        elif c.expect == "alias":
            assert c.name in aliases or c.name in items, c.kind
        elif c.expect == "reported":
            assert c.name in fails, (c.kind, c.name in items)
            assert c.reason.lower() in fails[c.name].lower(), (c.kind, fails[c.name])
        else:
            assert (c.name in items) != (c.name in fails), c.kind
    # nothing else got in, and every report reached the log as one "skipping PATH: REASON" line
    named = {c.name for c in cases}
    assert set(items) - named - aliases == set() and set(fails) <= named
    skipped = [m for m in msgs if m.startswith("skipping ")]
    assert len(skipped) == report.failed == len(fails)
    assert report.items == len(items) and report.decode_restarts == 1  # the hanging file cost one pool restart
    # the valid images are searchable vectors of the right shape
    assert verify_index(idx)["ok"]

    # after the build: the grown file is indexed, the vanished one forgotten, bad files not retried
    grow = next(c for c in cases if c.name == "grow.png")
    (d / "grow.png").write_bytes(grow.extra["full"])
    (d / "hang.png").unlink()
    r = update_index(idx, workers=0, quiet=True, log=lambda s: None)
    with open_index(idx) as ix:
        paths = {os.path.relpath(it["path"], d) for _, it in ix.iter_items()}
        fails = {os.path.relpath(k, d) for k, _ in ix.store.iter_failures()}
    assert "grow.png" in paths and "vanish.png" not in fails and "hang.png" not in fails
    assert r.added == 1 and r.failed == 0  # the unchanged bad files are not retried
    assert verify_index(idx)["ok"]


def _cli(args):
    from click.testing import CliRunner

    from cli import main

    os.environ["KGCLIP_PLUGINS"] = "benchmarks.fakes"
    r = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    res = r.invoke(main, args)
    res.returncode = res.exit_code
    return res


def test_cli_exit_codes_and_one_line_per_skip(tmp_path):
    from benchmarks.hostile import encode, noise

    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.png").write_bytes(encode(noise(1, 10, 10), "PNG"))
    (d / "bad.jpg").write_bytes(b"nope")
    (d / "empty.png").write_bytes(b"")
    p = _cli(["build", str(d), "-i", str(tmp_path / "i1"), "--model", "fake:v1", "--no-captions",
              "--workers", "0", "--format", "json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["items"] == 1
    skip_lines = [x for x in p.stderr.splitlines() if x.startswith("skipping ")]
    assert sorted(x.split(": ", 1)[0] for x in skip_lines) == [f"skipping {d / 'bad.jpg'}", f"skipping {d / 'empty.png'}"]
    assert "Traceback" not in p.stderr
    # nothing usable at all: exit 1, with the reasons
    os.unlink(d / "good.png")
    p = _cli(["-q", "build", str(d), "-i", str(tmp_path / "i2"), "--model", "fake:v1", "--no-captions",
              "--workers", "0"])
    assert p.returncode == 1 and "skipping" in p.stderr and "Traceback" not in p.stderr


DROP_DAC = """
import ctypes
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
libc = ctypes.CDLL(None, use_errno=True)
hdr, data = Hdr(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(hdr), data) == 0
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: without them root obeys file modes
    data[0].effective &= ~(1 << cap)
    data[0].permitted &= ~(1 << cap)
assert libc.capset(ctypes.byref(hdr), data) == 0
"""


def _can_drop_dac() -> bool:
    if os.geteuid() != 0:
        return True  # nothing to drop: chmod 000 already means unreadable
    try:
        return subprocess.run([sys.executable, "-c", DROP_DAC], timeout=30, capture_output=True).returncode == 0
    except Exception:  # noqa: BLE001
        return False


def test_unreadable_file_is_reported_as_permission_denied(tmp_path):
    """Root reads everything, so as root the build drops the capabilities that bypass file modes."""
    from benchmarks.hostile import encode, noise

    if not _can_drop_dac():
        pytest.skip("root without the right to drop CAP_DAC_OVERRIDE: chmod 000 files stay readable")
    d = tmp_path / "src"
    d.mkdir()
    (d / "ok.png").write_bytes(encode(noise(1, 10, 10), "PNG"))
    (d / "secret.png").write_bytes(encode(noise(2, 10, 10), "PNG"))
    (d / "secret.png").chmod(0)
    (d / "locked").mkdir()
    (d / "locked" / "x.png").write_bytes(encode(noise(3, 10, 10), "PNG"))
    (d / "locked").chmod(0)
    code = (DROP_DAC if os.geteuid() == 0 else "") + "import sys; sys.argv[0] = 'kgclip'; from cli import main; main()"
    try:
        p = subprocess.run([sys.executable, "-c", code, "build", str(d), "-i", str(tmp_path / "idx"), "--model",
                            "fake:v1", "--no-captions", "--workers", "0", "--format", "json"], env=env_for(),
                           cwd=str(REPO), capture_output=True, text=True, timeout=120)
    finally:
        (d / "locked").chmod(0o755)
        (d / "secret.png").chmod(0o644)
    assert p.returncode == 0, p.stderr
    assert f"skipping {d / 'secret.png'}: permission denied" in p.stderr
    assert f"skipping {d / 'locked'}: cannot read folder" in p.stderr
    assert json.loads(p.stdout)["items"] == 1
