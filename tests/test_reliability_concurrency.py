"""Searches in this process while another process runs `kgclip update` on the same index.

Every search must succeed; every freshly opened index must search FAISS data of
exactly one store generation (its image and caption ids equal the store's items
and caption owners at the generation it reports, as logged by the writer after
each commit); a long-lived Searcher must keep answering and pick up the new
generation once the update is done; a second writer gets "locked by pid N".
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from indexer import build_index, open_index, open_searcher, update_index
from retrieval.encoders import get_encoder
from retrieval.errors import IndexLocked
from retrieval.query import Searcher
from benchmarks.reliability_hooks import ids_digest, store_digests
from benchmarks.reliability_kit import CLI, REPO, env_for, faiss_ids, make_sources, mutate_sources, read_events, run_cli, \
    update_args

QUERIES = ["a picture", "picture number 3", "an edited caption", "noise"]


@pytest.fixture
def base(tmp_path):
    sources = make_sources(tmp_path / "src", n_folder=24, n_captioned=8, seed=3)
    idx = tmp_path / "idx"
    build_index(sources, idx, model="fake:v1", text_model="fake:v1", batch_size=4, workers=0, quiet=True,
                log=lambda s: None)
    mutate_sources(tmp_path / "src", seed=3)
    return tmp_path, idx


def _digests_by_generation(events, base_gen, base_digests):
    out = {base_gen: base_digests}
    for e in events:
        if e["event"] == "commit":
            out[e["generation"]] = (e["digest"], e["captions"])
    return out


def test_searches_during_update_see_one_generation(base):
    tmp_path, idx = base
    with open_index(idx) as ix:
        base_gen = ix.generation
        _, d_items, d_caps = store_digests(ix.store)
    events = tmp_path / "events.jsonl"
    writer = subprocess.Popen(CLI + update_args(idx, batch_size=2), env=env_for(events, 0.05, 0.3), cwd=str(REPO),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    enc = get_encoder("fake:v1")
    qv = enc.encode_queries(QUERIES)
    warm = open_searcher(idx, expand="none", hybrid="sum")
    cold = warm_n = 0
    generations = set()
    locked_seen = None
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            # a warm searcher never fails, whatever the writer is doing
            for q in QUERIES:
                r = warm.search(q, k=5)
                assert 1 <= len(r.hits) <= 5 and all(h.path for h in r.hits)
                warm_n += 1
            # a cold reader sees FAISS of exactly one generation
            with open_index(idx) as ix:
                gen = ix.generation
                img, cap = faiss_ids(ix._faiss["image"]), faiss_ids(ix._faiss["caption"])
                s, ids = ix.search(qv, k=5)
                assert (ids[:, 0] >= 0).all()
                s, ids = ix.search(qv, k=5, kind="caption")
                assert (ids[:, 0] >= 0).all()
            cold += 1
            generations.add(gen)
            known = _digests_by_generation(read_events(events), base_gen, (d_items, d_caps))
            assert gen in known, f"generation {gen} was never committed by the writer"
            assert (ids_digest(img), ids_digest(cap)) == known[gen], f"FAISS mixes generations at {gen}"
            if locked_seen is None and any(e["event"] == "commit" for e in read_events(events)):
                with pytest.raises(IndexLocked, match=rf"locked by pid {writer.pid}\b"):
                    update_index(idx, workers=0, quiet=True, log=lambda s: None)
                locked_seen = True
        assert writer.wait(timeout=60) == 0, writer.stderr.read()[-2000:]
        # the writer is done: the warm searcher moves to the final generation by itself
        with open_index(idx) as ix:
            final = ix.generation
            assert ix.rebuilt == []  # the writer left fresh FAISS files
            fresh = {h.id for q in QUERIES for h in Searcher(ix, expand="none").search(q, k=8).hits}
        after = {h.id for q in QUERIES for h in warm.search(q, k=8).hits}
        assert after == fresh and warm.index.generation == final
    finally:
        warm.close()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert locked_seen and cold >= 3 and warm_n >= 3 * len(QUERIES)
    assert len(generations) >= 2  # the readers really ran while the store moved on


def test_second_writer_gets_locked_by_pid_from_the_cli(base):
    tmp_path, idx = base
    events = tmp_path / "events.jsonl"
    pause = tmp_path / "pause"
    pause.touch()  # the writer holds still after its first commit until the refused writer has run
    env = env_for(events)
    env["KGCLIP_HOOK_PAUSE_FILE"] = str(pause)
    writer = subprocess.Popen(CLI + update_args(idx, batch_size=2), env=env, cwd=str(REPO),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "commit" for e in read_events(events)) and time.monotonic() < deadline:
            assert writer.poll() is None
            time.sleep(0.02)
        p = run_cli(["update", str(idx), "--workers", "0"], env_for())
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is locked by pid {writer.pid}" in lines[0], p.stderr
        assert writer.poll() is None  # the refused writer did not disturb the running one
    finally:
        pause.unlink()
        assert writer.wait(timeout=60) == 0
    # after the first writer is done, the lock is free again
    assert run_cli(update_args(idx), env_for()).returncode == 0
    with open_index(idx) as ix:
        assert np.isfinite(ix.get_vectors([i for i, _ in ix.iter_items()])).all()
