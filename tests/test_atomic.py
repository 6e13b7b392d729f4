"""retrieval.atomic: files and folders appear whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from retrieval.atomic import atomic_dir, atomic_write, atomic_write_json, remove_stale_temps, temp_name


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_bytes_text_and_writer_functions(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "héllo", durable=False)
    def write(tmp: str) -> None:  # e.g. np.save or faiss.write_index at the temp path
        with open(tmp, "wb") as fh:
            fh.write(b"xyz")

    atomic_write(tmp_path / "c.npy", write)
    atomic_write_json(tmp_path / "d.json", {"a": 1})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.npy").read_bytes() == b"xyz" and _mode(tmp_path / "c.npy") == 0o644
    assert (tmp_path / "d.json").read_text() == '{\n "a": 1\n}\n'
    assert not [p for p in tmp_path.rglob(".*")]


def test_a_failing_writer_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x"
    atomic_write(target, "old")

    def boom(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x"]


def test_stale_temps_are_removed(tmp_path):
    t = temp_name(tmp_path / "f")
    open(t, "w").close()
    (tmp_path / "f").write_text("keep")
    remove_stale_temps(tmp_path, "f")
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    out = tmp_path / "graph"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    with atomic_dir(out) as d:
        (d / "b").write_text("2")
    assert sorted(os.listdir(out)) == ["b"] and _mode(out) & 0o055
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "c").write_text("3")
            raise RuntimeError("failed half way")
    assert sorted(os.listdir(out)) == ["b"] and os.listdir(tmp_path) == ["graph"]
