"""Issue 22, data loss: vanished sources never wipe the library, and ``update`` prunes only when asked.

Each case runs the CLI and asserts the exit code, one clear line naming the source or folder, and the
item count kept (no items lost). ``verify`` passes afterwards. The fake encoder keeps them fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.hostile import encode, noise
from benchmarks.reliability_kit import REPO, env_for
from cli import main
from indexer import build_index, verify_index
from indexer.store import Store

FAKE = dict(model="fake:v1", text_model="fake:v1", workers=0, quiet=True, log=lambda s: None)


def runner() -> CliRunner:
    return CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def cli(*args: str):
    os.environ["KGCLIP_PLUGINS"] = "benchmarks.fakes"
    return runner().invoke(main, [str(a) for a in args])


def count_items(idx: Path) -> int:
    s = Store(str(idx), readonly=True)
    try:
        return s.count("items")
    finally:
        s.close()


def lines(text: str) -> list[str]:
    return [x for x in text.strip().splitlines() if x.strip()]


def make_source(d: Path, n: int = 14, sub: bool = True, seed: int = 0) -> Path:
    """n small distinct PNGs, every other one in ``sub/``."""
    d.mkdir(parents=True, exist_ok=True)
    if sub:
        (d / "sub").mkdir(exist_ok=True)
    for i in range(n):
        where = d / "sub" if sub and i % 2 else d
        (where / f"i{i:02d}.png").write_bytes(encode(noise(seed * 1000 + i, 10, 10), "PNG"))
    return d


@pytest.fixture
def lib(tmp_path):
    src = make_source(tmp_path / "src")
    idx = tmp_path / "idx"
    build_index([src], idx, **FAKE)
    assert count_items(idx) == 14
    return src, idx


def update(idx: Path, *flags: str):
    return cli("-q", "update", idx, "--workers", "0", *flags)


# -- an emptied, missing or unreadable source root ------------------------------------------------------
@pytest.mark.parametrize("flags", [(), ("--prune",)])
def test_emptied_source_root_keeps_every_item(lib, flags):
    src, idx = lib
    shutil.rmtree(src)
    src.mkdir()  # an unmounted drive leaves its empty mount point
    res = update(idx, *flags)
    assert res.exit_code == 0, res.stderr
    assert lines(res.stderr) == [f"kept 14 indexed files: source {src} is empty (an unmounted drive?); "
                                 "to remove them, run with --prune --yes"]
    assert count_items(idx) == 14 and verify_index(idx)["ok"]


@pytest.mark.parametrize("flags", [(), ("--prune",), ("--prune", "--yes")])
def test_missing_source_root_keeps_every_item(lib, flags):
    src, idx = lib
    src.rename(src.with_name("src.unmounted"))
    res = update(idx, *flags)
    assert res.exit_code == 0, res.stderr
    assert lines(res.stderr) == [f"kept 14 indexed files: source {src} is missing (an unmounted drive?)"]
    assert count_items(idx) == 14 and verify_index(idx)["ok"]


def test_emptied_root_is_removed_only_with_prune_and_yes(lib):
    src, idx = lib
    shutil.rmtree(src)
    src.mkdir()
    res = update(idx, "--prune", "--yes", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["removed"] == 14 and count_items(idx) == 0


# root drops CAP_DAC_OVERRIDE in the child, as tests/test_reliability_files.py does
def _update_without_dac(idx: Path, *flags: str) -> subprocess.CompletedProcess:
    from tests.test_reliability_files import DROP_DAC, _can_drop_dac

    if not _can_drop_dac():
        pytest.skip("root without the right to drop CAP_DAC_OVERRIDE: chmod 000 stays readable")
    code = (DROP_DAC if os.geteuid() == 0 else "") + \
        "import sys; sys.argv[0] = 'kgclip'; import benchmarks.fakes; from cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "-q", "update", str(idx), "--workers", "0", *flags],
                          env=env_for(), cwd=str(REPO), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("what", ["root", "subfolder"])
def test_unreadable_root_or_subfolder_keeps_its_items(lib, what):
    src, idx = lib
    locked = src if what == "root" else src / "sub"
    locked.chmod(0)
    try:
        p = _update_without_dac(idx, "--prune")
    finally:
        locked.chmod(0o755)
    assert p.returncode == 0, p.stderr
    kept = [x for x in lines(p.stderr) if x.startswith("kept ")]
    assert len(kept) == 1 and str(locked) in kept[0] and "cannot be read" in kept[0], p.stderr
    assert kept[0].startswith("kept 14 " if what == "root" else "kept 7 ")
    assert "Traceback" not in p.stderr and count_items(idx) == 14
    res = update(idx, "--prune")  # readable again: nothing was lost, nothing to do
    assert res.exit_code == 0 and lines(res.stderr) == [] and count_items(idx) == 14


# -- deleted files: kept and counted without --prune; removed with it ---------------------------------------
def test_deleted_files_are_kept_without_prune(lib):
    src, idx = lib
    (src / "i00.png").unlink()
    (src / "sub" / "i01.png").unlink()
    res = update(idx)
    assert res.exit_code == 0 and lines(res.stderr) == ["2 missing (kept; use --prune to remove)"], res.stderr
    assert count_items(idx) == 14
    res = update(idx, "--prune", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["removed"] == 2 and count_items(idx) == 12
    assert verify_index(idx)["ok"]


def test_deleted_subfolder_is_pruned_like_its_files(lib):
    src, idx = lib
    shutil.rmtree(src / "sub")  # gone from a folder that was read: verifiably gone
    res = update(idx, "--prune", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["removed"] == 7 and count_items(idx) == 7


def test_emptied_subfolder_keeps_its_items_unless_prune_and_yes(lib):
    """A drive mounted inside the source (``src/sub``) and unmounted now: an empty folder, not deletions."""
    src, idx = lib
    shutil.rmtree(src / "sub")
    (src / "sub").mkdir()
    res = update(idx, "--prune")
    assert res.exit_code == 0 and lines(res.stderr) == [
        f"kept 7 indexed files: folder {src / 'sub'} is empty (an unmounted drive?); "
        "to remove them, run with --prune --yes"], res.stderr
    assert count_items(idx) == 14
    res = update(idx, "--prune", "--yes", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["removed"] == 7 and count_items(idx) == 7


def test_file_list_over_an_emptied_mount_point_keeps_its_items(tmp_path):
    drive = make_source(tmp_path / "mnt", n=12, sub=False)
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in sorted(drive.glob("*.png"))))
    idx = tmp_path / "idx"
    build_index([tmp_path / "list.txt"], idx, **FAKE)
    for p in drive.iterdir():
        p.unlink()
    res = update(idx, "--prune")
    assert res.exit_code == 0 and len(lines(res.stderr)) == 1 and f"folder {drive} is empty" in res.stderr
    assert count_items(idx) == 12


# -- the guard: a large share of the index needs --yes ------------------------------------------------------
def test_removing_most_of_the_index_needs_yes(lib):
    src, idx = lib
    for p in sorted(src.rglob("*.png"))[:12]:
        p.unlink()
    res = update(idx, "--prune")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert lines(res.stderr) == ["Error: refusing to remove 12 of 14 indexed files (more than 50% of the index): "
                                 "check that the sources are mounted, or rerun with --yes to remove them"]
    assert count_items(idx) == 14 and verify_index(idx)["ok"]
    res = update(idx, "--prune", "--yes", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["removed"] == 12 and count_items(idx) == 2


# -- other source kinds ---------------------------------------------------------------------------------
def test_manifest_whose_images_drive_is_unmounted_keeps_its_items(tmp_path):
    """A manifest on the internal disk naming images on a drive that is not mounted now."""
    drive = make_source(tmp_path / "drive", n=12, sub=False)
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps({"path": str(p), "caption": f"photo {p.stem}"}) + "\n"
                           for p in sorted(drive.glob("*.png"))))
    idx = tmp_path / "idx"
    build_index([man], idx, **FAKE)
    drive.rename(tmp_path / "drive.off")
    res = update(idx, "--prune", "--yes")
    assert res.exit_code == 0, res.stderr
    assert lines(res.stderr) == [f"kept 12 indexed files: folder {drive} is missing (an unmounted drive?)"], res.stderr
    assert count_items(idx) == 12 and verify_index(idx)["ok"]


@pytest.mark.parametrize("replace", ["fifo", "empty", "missing"])
def test_file_list_source_replaced(tmp_path, replace):
    """The list itself became a FIFO (no hang), an empty file, or vanished: its items are kept."""
    imgs = make_source(tmp_path / "imgs", n=6, sub=False)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in sorted(imgs.glob("*.png"))))
    idx = tmp_path / "idx"
    build_index([lst], idx, **FAKE)
    lst.unlink()
    if replace == "fifo":
        os.mkfifo(lst)
    elif replace == "empty":
        lst.write_text("")
    res = update(idx, "--prune")
    assert res.exit_code == 0 and len(lines(res.stderr)) == 1, res.stderr
    assert lines(res.stderr)[0].startswith(f"kept 6 indexed files: source {lst} ")
    assert count_items(idx) == 6


def test_build_over_an_index_whose_other_source_vanished(tmp_path):
    """`build B -i IDX` over an index that also holds A: A's vanished items follow the same rules."""
    a = make_source(tmp_path / "a", n=6, sub=False, seed=1)
    b = make_source(tmp_path / "b", n=6, sub=False, seed=2)
    idx = tmp_path / "idx"
    build_index([a], idx, **FAKE)
    build_index([b], idx, **FAKE)
    a.rename(tmp_path / "a.off")
    res = cli("-q", "build", b, "-i", idx, "--model", "fake:v1", "--text-model", "fake:v1", "--workers", "0",
              "--prune", "--yes")
    assert res.exit_code == 0, res.stderr
    assert lines(res.stderr) == [f"kept 6 indexed files: source {a} is missing (an unmounted drive?)"]
    assert count_items(idx) == 12 and verify_index(idx)["ok"]


def test_known_file_that_cannot_be_read_now_keeps_its_item(lib):
    """A changed file whose bytes cannot be read (permission, I/O error) is no reason to drop its item."""
    src, idx = lib
    f = src / "i00.png"
    os.utime(f, ns=(1, 1))  # looks changed: the update reads it again
    f.chmod(0)
    try:
        p = _update_without_dac(idx, "--prune")
    finally:
        f.chmod(0o644)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert lines(p.stderr) == [f"skipping {f}: permission denied"], p.stderr
    assert count_items(idx) == 14 and verify_index(idx)["ok"]
