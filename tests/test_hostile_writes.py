"""Hostile index folders, writes (issue 22, families 1, 2, 9 and disk full).

Every file kgclip creates, opens for writing or locks inside an index is never followed through a
symbolic link; readers write nothing and work on a read-only folder; searches during an update serve
the last published FAISS generation; a failed FAISS save falls back to memory; a full disk says so,
names the file and leaves a resumable index. Each CLI case runs in a subprocess under a timeout and an
address-space limit, and checks that a victim file outside the index keeps its bytes and mtime, that
no file appears beside it, the exit code, and that the error is one line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.reliability_kit import REPO, make_sources
from indexer import build_index, open_index, verify_index
from indexer.store import Store, WriteLock
from retrieval.errors import IndexLocked

MEM_LIMIT = 4 << 30  # importing numpy + faiss takes about 1.5-2.5 GB of address space
TIMEOUT = 60
VICTIM = b"precious bytes outside the index\n"
READERS = {"info": ["info", "{idx}"], "search": ["search", "{idx}", "a picture", "-k", "3"],
           "verify": ["verify", "{idx}"]}
WRITERS = {"build": ["build", "{src}", "-i", "{idx}", "--model", "fake:v1", "--text-model", "fake:v1",
                     "--workers", "0"],
           "update": ["update", "{idx}", "--workers", "0"], "repair": ["verify", "--repair", "{idx}"]}


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One small fake:v1 index (with captions) that each test copies."""
    root = tmp_path_factory.mktemp("hostile-writes")
    sources = make_sources(root / "src", n_folder=12, n_captioned=4, seed=5)
    build_index(sources, root / "idx", model="fake:v1", text_model="fake:v1", batch_size=4, workers=0,
                quiet=True, log=lambda s: None)
    return root


@pytest.fixture
def case(template, tmp_path):
    """(index folder, victim file outside it, sources) for one test."""
    shutil.copytree(template / "src", tmp_path / "src", symlinks=True)
    shutil.copytree(template / "idx", tmp_path / "idx", symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(VICTIM)
    return tmp_path / "idx", victim, tmp_path / "src"


def _snapshot(folder: Path, lock_table: bool = True) -> dict:
    """path -> (kind, bytes digest or link target, mtime_ns) for everything under ``folder`` (without
    LMDB's lock table, where readers register, unless ``lock_table``)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not lock_table and p.name == "lock.mdb" and not p.is_symlink():
            continue
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(p)] = ("link", os.readlink(p), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
        else:
            out[str(p)] = ("dir", None, None)
    return out


def _args(cmd: list[str], idx: Path, src: Path | None = None) -> list[str]:
    return [a.format(idx=idx, src=src / "imgs" if src else "") for a in cmd]


PR_CAPBSET_DROP = 24
DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: root obeys permission bits without them


def _drop_dac() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in DAC_CAPS:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_cli(args: list[str], as_plain_user: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a subprocess under TIMEOUT and MEM_LIMIT; ``as_plain_user``: as root, without the
    capabilities that let root write to read-only files (so a read-only folder is read-only)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), KGCLIP_PLUGINS="benchmarks.fakes", KGCLIP_OFFLINE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
        if as_plain_user and os.geteuid() == 0:
            _drop_dac()

    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=limits)


def clean(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr


def one_error_line(res: subprocess.CompletedProcess, *words: str) -> None:
    clean(res)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [x for x in res.stderr.strip().splitlines() if not x.startswith("skipping ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for w in words:
        assert w in lines[0], res.stderr


def untouched(victim: Path) -> None:
    """The victim keeps its bytes; nothing new appeared beside it."""
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def stale(idx: Path) -> None:
    """Make image.faiss stale (its sidecar gone): a reader derives it again."""
    (idx / "image.faiss.json").unlink()


# -- family 1: write.lock -------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [*READERS, "search-stale"])
def test_readers_never_write_through_a_linked_write_lock(case, cmd):
    idx, victim, _ = case
    (idx / "write.lock").unlink()
    os.symlink(victim, idx / "write.lock")
    mtime = victim.stat().st_mtime_ns
    if cmd == "search-stale":
        stale(idx)
    res = run_cli(_args(READERS["search" if cmd == "search-stale" else cmd], idx))
    clean(res)
    assert res.returncode == 0, res.stderr
    untouched(victim)
    assert victim.stat().st_mtime_ns == mtime
    if cmd == "search-stale":  # derived again, served from memory, not saved: one warning naming the link
        assert "img" in res.stdout or "c0" in res.stdout
        warn = res.stderr.strip().splitlines()
        assert len(warn) == 1 and "write.lock is a symbolic link" in warn[0], res.stderr
        assert not (idx / "image.faiss.json").exists()


@pytest.mark.parametrize("cmd", list(WRITERS))
@pytest.mark.parametrize("target", ["victim", "dangling"])
def test_writers_refuse_a_linked_write_lock(case, cmd, target):
    idx, victim, src = case
    (idx / "write.lock").unlink()
    if target == "dangling":
        victim.unlink()
    os.symlink(victim, idx / "write.lock")
    before = _snapshot(idx, lock_table=False)
    res = run_cli(_args(WRITERS[cmd], idx, src))
    one_error_line(res, str(idx / "write.lock"), "symbolic link")
    if target == "dangling":
        assert not victim.exists() and list(victim.parent.iterdir()) == []  # the missing target is not created
    else:
        untouched(victim)
    assert _snapshot(idx, lock_table=False) == before


def test_readers_do_not_create_a_dangling_write_lock_target(case):
    idx, victim, _ = case
    victim.unlink()
    (idx / "write.lock").unlink()
    os.symlink(victim, idx / "write.lock")
    stale(idx)
    for name, cmd in READERS.items():
        res = run_cli(_args(cmd, idx))
        clean(res)
        assert res.returncode == (1 if name == "verify" else 0), res.stderr  # verify reports the stale file
    assert list(victim.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_write_lock_that_is_not_a_file_is_refused(case, kind):
    idx, _, src = case
    (idx / "write.lock").unlink()
    if kind == "folder":
        (idx / "write.lock").mkdir()
    else:
        os.mkfifo(idx / "write.lock")
    res = run_cli(_args(READERS["info"], idx))
    assert res.returncode == 0, res.stderr
    res = run_cli(_args(WRITERS["update"], idx, src))
    one_error_line(res, str(idx / "write.lock"), "not a regular file")


@pytest.mark.parametrize("name", ["index.json", "image.faiss", "image.faiss.json", "caption.faiss.json"])
def test_linked_files_that_kgclip_replaces_are_replaced_not_written_through(case, name):
    """Files written whole (temp file + rename) replace a planted link; the link's target stays as it is."""
    idx, victim, src = case
    victim.write_bytes((idx / name).read_bytes())  # readers read it through the link: a read is no write
    (idx / name).unlink()
    os.symlink(victim, idx / name)
    saved = victim.read_bytes()
    for cmd in READERS.values():
        res = run_cli(_args(cmd, idx))
        clean(res)
    res = run_cli(_args(WRITERS["build"], idx, src))  # a new source (this copy): a new generation to write
    clean(res)
    assert res.returncode == 0, res.stderr
    assert not (idx / name).is_symlink() and verify_index(idx)["ok"], res.stderr
    assert victim.read_bytes() == saved and sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


# -- family 2: the LMDB files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb"])
@pytest.mark.parametrize("target", ["victim", "dangling"])
def test_lmdb_files_linked_outside(case, name, target):
    """Readers read through a linked data.mdb (a read is no write) and skip a linked lock table;
    writers refuse both. The outside file keeps its bytes whatever runs."""
    idx, victim, src = case
    f = idx / "store.lmdb" / name
    if name == "data.mdb" and target == "victim":
        victim.write_bytes(f.read_bytes())  # a real store outside: readers may read it, nobody writes it
    elif target == "dangling":
        victim.unlink()
    f.unlink()
    os.symlink(victim, f)
    saved = victim.read_bytes() if victim.exists() else None
    for cmd in READERS.values():
        res = run_cli(_args(cmd, idx))
        if name == "data.mdb" and target == "dangling":
            one_error_line(res, "store.lmdb")  # no store to read: one line, nothing created
        else:
            clean(res)
            assert res.returncode == 0, res.stderr
    for cmd in WRITERS.values():
        res = run_cli(_args(cmd, idx, src))
        if name == "data.mdb" and target == "dangling":
            one_error_line(res, "store.lmdb")
        else:
            one_error_line(res, str(f), "symbolic link")
    if saved is None:
        assert list(victim.parent.iterdir()) == []
    else:
        assert victim.read_bytes() == saved
        assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def test_linked_store_folder_is_read_but_never_written(case):
    idx, victim, src = case
    victim.unlink()
    elsewhere = victim.parent / "store"
    shutil.move(str(idx / "store.lmdb"), elsewhere)
    (elsewhere / "lock.mdb").unlink()  # a reader must not create it there either
    os.symlink(elsewhere, idx / "store.lmdb")
    before = _snapshot(victim.parent)
    res = run_cli(_args(READERS["search"], idx))
    clean(res)
    assert res.returncode == 0, res.stderr
    res = run_cli(_args(WRITERS["update"], idx))
    one_error_line(res, "store.lmdb", "symbolic link")
    assert _snapshot(victim.parent) == before


# -- readers on a read-only folder ----------------------------------------------------------------
@pytest.fixture
def read_only(case):
    """The index made read-only (``chmod -R a-w``); as root the commands run without the capabilities
    that ignore permission bits."""
    idx, _, _ = case
    if os.geteuid() == 0:
        try:
            subprocess.run([sys.executable, "-c", "0"], preexec_fn=_drop_dac, check=True, timeout=TIMEOUT)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: a read-only folder cannot be simulated")
    for p in [idx, *idx.rglob("*")]:
        os.chmod(p, stat.S_IMODE(p.lstat().st_mode) & ~0o222)
    yield idx
    for p in [idx, *idx.rglob("*")]:
        os.chmod(p, stat.S_IMODE(p.lstat().st_mode) | 0o200)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "stale-faiss"])
def test_readers_work_on_a_read_only_folder(read_only, fresh):
    ro = read_only
    if not fresh:
        os.chmod(ro, 0o755)
        stale(ro)
        os.chmod(ro, 0o555)
    before = _snapshot(ro)
    for name, cmd in READERS.items():
        res = run_cli(_args(cmd, ro), as_plain_user=True)
        clean(res)
        if name == "verify" and not fresh:
            assert res.returncode == 1 and "image.faiss" in res.stdout  # reports the stale file, writes nothing
        else:
            assert res.returncode == 0, (name, res.stderr)
        if name == "search":
            assert res.stdout.strip() and not res.stderr.strip(), res.stderr  # no warning: nothing to save
    assert _snapshot(ro) == before
    res = run_cli(_args(WRITERS["update"], ro), as_plain_user=True)  # a writer: one clear line
    one_error_line(res)


def test_reader_without_a_lock_table_waits_for_no_writer(case):
    """A reader that cannot use lock.mdb (here: missing) is invisible to writers, so it refuses to read
    while one holds write.lock rather than risk pages recycled under it."""
    idx, _, _ = case
    (idx / "store.lmdb" / "lock.mdb").unlink()
    res = run_cli(_args(READERS["info"], idx))
    assert res.returncode == 0 and not (idx / "store.lmdb" / "lock.mdb").exists(), res.stderr
    with WriteLock(str(idx)):
        res = run_cli(_args(READERS["search"], idx))
    one_error_line(res, "is being written by pid", "lock.mdb")


def test_reader_without_a_lock_table_notices_a_recycled_snapshot(case):
    """The generation check behind ``lock=False``: a read during which a writer committed twice (so it
    may have reused the snapshot's pages) ends in IndexLocked, never in silently torn data."""
    idx, _, _ = case
    (idx / "store.lmdb" / "lock.mdb").unlink()
    st = Store(str(idx), readonly=True)
    try:
        assert st.nolock
        with st.read() as t:  # nothing written meanwhile: fine
            assert t.stat(st.db["items"])["entries"] == 16
        writer = ("import sys; from indexer.store import Store; s = Store(sys.argv[1]); "
                  "[s.write(lambda t: None) for _ in range(2)]; s.close()")
        with pytest.raises(IndexLocked, match="changed while it was read"):
            with st.read():
                subprocess.run([sys.executable, "-c", writer, str(idx)], cwd=str(REPO), check=True, timeout=TIMEOUT,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        st.close()


# -- family 9: searches during an update; a failed FAISS save -------------------------------------
def test_cold_reader_serves_the_published_generation_while_a_writer_works(case):
    idx, _, _ = case
    with open_index(idx) as ix:
        published = ix.generation
        first = ix.search(ix.get_vectors([0]), k=1)[1][0, 0]
    with WriteLock(str(idx)):
        st = Store(str(idx))
        try:
            st.write(lambda txn: txn.remove_path(next(iter(st.path_keys()))))  # the writer's first batch
        finally:
            st.close()
        with open_index(idx) as ix:
            assert ix.rebuilt == [] and ix.generation == published  # no re-derive, no re-tune
            assert ix.search(ix.get_vectors([0]), k=1)[1][0, 0] == first
    with open_index(idx) as ix:  # no writer: a stale file is derived again (and saved)
        assert ix.rebuilt and ix.generation == published + 1


@pytest.mark.parametrize("error", [RuntimeError("Error in faiss::write_index: write error: No space left on device"),
                                   RuntimeError("Error in faiss::write_index: something else failed")],
                         ids=["enospc", "other"])
def test_failed_faiss_save_serves_from_memory(case, monkeypatch, caplog, error):
    import faiss

    idx, _, _ = case
    stale(idx)

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(faiss, "write_index", fail)
    import indexer.index as index_mod

    monkeypatch.setattr(index_mod.log, "disabled", False)  # import-linter's dictConfig (test_layers) disables it
    with caplog.at_level("WARNING"):
        with open_index(idx) as ix:
            assert ix.rebuilt == ["image"]
            s, ids = ix.search(ix.get_vectors([1]), k=1)
            assert ids[0, 0] == 1
    warn = [r.getMessage() for r in caplog.records if "could not save" in r.getMessage()]
    assert len(warn) == 1 and "searching from memory" in warn[0]
    if "No space" in str(error):
        assert "no space left on device writing" in warn[0] and "image.faiss" in warn[0]
    assert not (idx / "image.faiss.json").exists()
    assert not [n for n in os.listdir(idx) if n.endswith(".tmp")]


# -- family 10: a full disk -----------------------------------------------------------------------
def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always keeps stderr apart
        return CliRunner()


def _fail_store_commits(monkeypatch, after: int, message: str):
    """Every store write transaction after the first ``after`` fails as LMDB does on a full disk."""
    import lmdb

    import indexer.store as st

    orig, n = st.Txn.__init__, {"w": 0}

    def init(self, store, t):
        n["w"] += 1
        if n["w"] > after:
            raise lmdb.Error(message)
        orig(self, store, t)

    monkeypatch.setattr(st.Txn, "__init__", init)
    if "Input/output" in message:  # LMDB's short write: taken for a full disk when almost no space is left
        real = os.statvfs
        monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 10, 0, 0, 10, 0, 0, 0, 255))
                            if "idx" in str(p) else real(p))


def _fail_file_writes(monkeypatch, marker: str):
    """os.write into a file whose name contains ``marker`` fails with ENOSPC."""
    real = os.write

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if marker in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("where", ["store-commit", "store-eio", "faiss", "faiss-runtime", "manifest"])
def test_disk_full_names_the_file_and_stays_resumable(case, monkeypatch, where):
    from cli import main

    idx, _, src = case
    shutil.rmtree(idx)
    args = _args(WRITERS["build"], idx, src) + ["--batch-size", "4"]
    if where == "store-commit":
        _fail_store_commits(monkeypatch, 3, "mdb_txn_commit: No space left on device")
        culprit = "data.mdb"
    elif where == "store-eio":
        _fail_store_commits(monkeypatch, 3, "mdb_txn_commit: Input/output error")
        culprit = "data.mdb"
    elif where == "faiss":
        _fail_file_writes(monkeypatch, ".image.faiss.")
        culprit = "image.faiss"
    elif where == "faiss-runtime":
        import faiss

        def fail(*a, **k):
            raise RuntimeError("Error in faiss::FileIOWriter: write error: No space left on device")

        monkeypatch.setattr(faiss, "write_index", fail)
        culprit = "image.faiss"
    else:
        _fail_file_writes(monkeypatch, ".index.json.")
        culprit = "index.json"
    r = _runner().invoke(main, args)
    assert r.exit_code == 1, (r.output, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("skipping ")]
    assert len(lines) == 1 and lines[0].startswith("Error: no space left on device writing "), r.stderr
    assert culprit in lines[0] and "Traceback" not in r.stderr
    assert not idx.exists() or not [n for n in os.listdir(idx) if n.endswith(".tmp")]
    monkeypatch.undo()
    r = _runner().invoke(main, args)  # room again: the same command continues
    assert r.exit_code == 0, r.stderr
    rep = verify_index(idx)
    assert rep["ok"] and rep["counts"]["items"] == 12, rep  # 12 images (and an alias, and a broken file)


@pytest.mark.parametrize("where", ["store-commit", "faiss"])
def test_disk_full_during_update_keeps_the_index(case, monkeypatch, where):
    from cli import main

    from benchmarks.reliability_kit import mutate_sources

    idx, _, src = case
    shutil.rmtree(idx)
    build_index([str(src / "imgs")], idx, model="fake:v1", text_model="fake:v1", batch_size=2, workers=0,
                quiet=True, log=lambda s: None)
    before = verify_index(idx)["counts"]["items"]
    mutate_sources(src, seed=5)  # adds, deletes, modifies, renames
    if where == "store-commit":
        _fail_store_commits(monkeypatch, 1, "mdb_txn_commit: No space left on device")
    else:
        _fail_file_writes(monkeypatch, ".image.faiss.")
    args = ["update", str(idx), "--prune", "--workers", "0", "--batch-size", "2"]
    r = _runner().invoke(main, args)
    assert r.exit_code == 1, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("skipping ")]
    assert len(lines) == 1 and lines[0].startswith("Error: no space left on device writing "), r.stderr
    monkeypatch.undo()
    with open_index(idx) as ix:  # the index still answers, from what was committed
        first = next(iter(ix.iter_items()))[0]
        assert len(ix) >= before - 2 and ix.search(ix.get_vectors([first]), k=1)[1][0, 0] == first
    r = _runner().invoke(main, args)
    assert r.exit_code == 0, r.stderr
    assert verify_index(idx)["ok"]


def test_a_writer_after_readers_in_one_process(case):
    """Readers open the store read-only; an update in the same process reopens it writable for all of
    them (LMDB allows one environment per folder and process), and the readers carry on."""
    from indexer import open_searcher, update_index

    idx, _, _ = case
    with open_searcher(idx, expand="none") as s:
        before = [h.id for h in s.search("a picture", k=3).hits]
        assert s.index.store.env.flags()["readonly"]  # opened read-only
        update_index(idx, workers=0, quiet=True, log=lambda x: None)
        assert [h.id for h in s.search("a picture", k=3).hits] == before
    assert verify_index(idx)["ok"]
