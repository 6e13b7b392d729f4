"""The build pipeline: scan -> decode (worker pool) -> encode (batched) -> write (one transaction per batch).

Stage functions (:func:`plan_item`, :func:`encode_batch`, :func:`write_batch`)
are plain functions over plain data, so the same units can run inside a
distributed engine later. :func:`run` wires them together in one process:
decoding runs ahead in worker processes while the main process encodes and
writes, every stage is timed, and a batch is committed atomically, so an
interrupted run continues from its last committed batch.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .decode import Decoded
from .decode_pool import DecodePool
from .prune import Pruner, sweep
from .sources import Item, Skip, iter_sources
from .report import BuildReport, SkipLog, reason_kind  # noqa: F401 (reason_kind: build.py uses it here)
from .store import Store, Txn


class BuildInterrupted(Exception):
    """Raised by the test hook ``stop_after_batches``: the run stops as after Ctrl-C or a crash."""


class NeedsVector(Exception):
    """An entry planned as a duplicate turned out to hold new content (its twin was removed)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


@dataclass
class Entry:
    """One planned store change for a decoded item."""

    op: str  # "new" | "alias" | "update" | "fail"
    item: Item
    decoded: Decoded | None = None
    vector: np.ndarray | None = None
    concepts: list | None = None
    profile: tuple | None = None  # lite's soft concept profile (class indexes, probabilities)
    reembed_captions: bool = False
    cap_vecs: np.ndarray | None = None
    reason: str = ""


# -- scan ------------------------------------------------------------------------
class SeenKeys:
    """The keys a scan saw, for the sweep of gone files: 16 bytes a key, not a Python set of paths.

    A key is kept as its 128-bit BLAKE2b digest (a set of path strings costs about 170 bytes a
    path: 170 MiB for a million files). Membership is asked only after the scan, so the digests
    are appended as they come and sorted once. Two paths share a digest with probability about
    n^2 / 2^129 (1e-26 for 100 million paths).
    """

    def __init__(self):
        self._new = bytearray()
        self._sorted = np.zeros(0, "S16")

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def add(self, key: str) -> None:
        self._new += self._digest(key)

    def _frozen(self) -> np.ndarray:
        if self._new:
            self._sorted = np.unique(np.concatenate([self._sorted, np.frombuffer(self._new, "S16")]))
            self._new = bytearray()
        return self._sorted

    def contains(self, keys: list[str]) -> np.ndarray:
        """A bool per key: was it added?"""
        have = self._frozen()
        q = np.array([self._digest(k) for k in keys], "S16")
        if not len(have) or not len(q):
            return np.zeros(len(q), bool)
        pos = np.minimum(np.searchsorted(have, q), len(have) - 1)
        return have[pos] == q

    def __contains__(self, key: str) -> bool:
        return bool(self.contains([key])[0])


def is_current(store: Store, it: Item | Skip) -> bool:
    """True when the store already reflects this item or skip (nothing to do)."""
    if isinstance(it, Skip):
        f = store.get_failure(it.key)
        return f is not None and f["reason"] == it.reason
    p = store.get_path(it.key)
    if p is not None:
        return (p["size"] == it.size and p["mtime_ns"] == it.mtime_ns and p.get("captions", []) == it.captions
                and p.get("meta", {}) == it.meta)
    f = store.get_failure(it.key)
    return f is not None and f.get("size") == it.size and f.get("mtime_ns") == it.mtime_ns


# -- stage functions -------------------------------------------------------------------
def plan_item(store: Store, d: Decoded, batch_hashes: set[str]) -> Entry:
    """Decide what a decoded item changes in the store (reads only)."""
    if not d.ok:
        return Entry("fail", d.item, d, reason=d.reason)
    prev = store.get_path(d.item.key)
    if prev is not None and prev["sha256"] == d.sha256:
        return Entry("update", d.item, d, reembed_captions=prev.get("captions", []) != d.item.captions)
    if d.sha256 in batch_hashes or store.has_hash(d.sha256):
        return Entry("alias", d.item, d, reembed_captions=True)
    batch_hashes.add(d.sha256)
    return Entry("new", d.item, d, reembed_captions=True)


def encode_batch(encoder, arrays: list[np.ndarray], with_concepts: bool = True):
    """Stage: stacked model inputs -> (vectors, concepts or None, concept profiles or None)."""
    out = encoder.encode_image_arrays(np.stack(arrays), with_concepts=with_concepts)
    return out.vectors, out.concepts, out.profiles


def encode_captions(text_encoder, entries: list[Entry]) -> None:
    """Stage: embed the captions of entries that need it (all in one call)."""
    todo = [e for e in entries if e.reembed_captions and e.item.captions and e.op != "fail"]
    if text_encoder is None or not todo:
        return
    texts = [c for e in todo for c in e.item.captions]
    vecs = text_encoder.encode_texts(texts)
    at = 0
    for e in todo:
        n = len(e.item.captions)
        e.cap_vecs = vecs[at : at + n]
        at += n


def write_batch(store: Store, entries: list[Entry], progress: dict | None = None) -> None:
    """Stage: apply a batch in ONE transaction (raises NeedsVector when a planned twin vanished)."""

    def fn(txn: Txn):
        for n, e in enumerate(entries):
            it = e.item
            if e.op == "fail":
                d = e.decoded
                if d is not None and not d.sha256 and txn.get_path(it.key) is not None:
                    continue  # its bytes could not be read now (permission, I/O, vanished): the item stays
                size = d.item.size if d is not None else -1
                mtime = d.item.mtime_ns if d is not None else -1
                txn.set_failure(it.key, e.reason, size, mtime)
                continue
            d = e.decoded
            caps = it.captions if e.reembed_captions else None
            if e.op == "update":
                txn.update_path(it.key, size=it.size, mtime_ns=it.mtime_ns, captions=caps, cap_vecs=e.cap_vecs,
                                meta=it.meta)
                continue
            if txn.get_path(it.key) is not None:
                txn.remove_path(it.key)  # the path now holds other content
            if e.vector is None and txn.hash_id(d.sha256) is None:
                raise NeedsVector(n)
            txn.add_path(it.key, sha256=d.sha256, size=it.size, mtime_ns=it.mtime_ns, width=d.width,
                         height=d.height, vector=e.vector, concepts=e.concepts, captions=it.captions,
                         cap_vecs=e.cap_vecs, meta=it.meta, profile=e.profile)
        if progress:
            txn.set_meta("progress", progress)

    store.write(fn)


# -- the loop --------------------------------------------------------------------------
def run(
    store: Store,
    encoder,
    text_encoder,
    sources: list[str],
    *,
    root: str | None = None,
    base: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    timeout: float = 30.0,
    max_pixels: int = 100_000_000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    stop_after_batches: int | None = None,
    report: BuildReport,
    prune: bool = False,
    yes: bool = False,
) -> BuildReport:
    """Bring the store in line with ``sources``; returns the report (FAISS is not touched here).

    Stored files the scan no longer finds are removed only with ``prune`` and only when verifiably
    gone (:mod:`indexer.prune`); a missing, empty or unreadable source or folder keeps its items.
    """
    t_start = time.perf_counter()
    tm = report.timings
    report.workers, report.batch_size = workers, batch_size
    say = log or (lambda s: print(s, file=sys.stderr))

    # pass 1: what is there, and how much is to do (for the progress bar's ETA)
    t0 = time.perf_counter()
    pruner = Pruner(prune=prune, yes=yes)
    sources = pruner.check_sources(list(sources))  # missing, unreadable or empty sources are not walked
    seen = SeenKeys()
    todo = 0
    for it in iter_sources(sources, root=root, base=base):
        if _held(store, pruner, it):
            continue
        seen.add(it.key)
        if is_current(store, it):
            report.unchanged += isinstance(it, Item) and store.get_path(it.key) is not None
        else:
            todo += 1
    tm.scan += time.perf_counter() - t0
    pruner.check_guard(store, seen)  # a large share of the index about to go: refused before any write

    bar = None
    if progress and _on_terminal(sys.stderr):  # redirected to a file or a pipe: no bar lines in it
        from tqdm import tqdm

        bar = tqdm(total=todo, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1, desc="indexing")
        say = lambda s: bar.write(s, file=sys.stderr)  # noqa: E731

    skips: list[Skip] = []
    skipped = SkipLog(report, say)

    def todo_items() -> Iterator[Item]:
        for it in iter_sources(sources, root=root, base=base):
            if _held(store, pruner, it):
                continue
            seen.add(it.key)  # a file that appeared since pass 1 is kept, not swept
            if is_current(store, it):
                continue
            if isinstance(it, Skip):
                skips.append(it)
                continue
            yield it

    if todo:
        t = time.perf_counter()
        transform = encoder.image_transform()  # loads the model only when its transform needs it
        tm.model_load += time.perf_counter() - t
    else:
        transform = None  # nothing to decode: the model is never loaded
    with_concepts = True
    entries: list[Entry] = []
    n_encode = 0
    batch_hashes: set[str] = set()

    def flush():
        nonlocal entries, n_encode, batch_hashes
        for s in skips:
            entries.append(Entry("fail", Item(s.key, s.key), None, reason=s.reason))
            skipped(s.key, s.reason)
        skips.clear()
        if not entries:
            return
        t = time.perf_counter()
        new = [e for e in entries if e.op == "new"]
        if new and not getattr(encoder, "_loaded", True):
            t = time.perf_counter()
            encoder.load()  # first time something needs encoding
            tm.model_load += time.perf_counter() - t
        t = time.perf_counter()
        if new:
            vecs, concepts, profiles = encode_batch(encoder, [e.decoded.array for e in new], with_concepts)
            for j, e in enumerate(new):
                e.vector = vecs[j]
                e.concepts = concepts[j] if concepts else None
                e.profile = profiles[j] if profiles else None
        tm.encode += time.perf_counter() - t
        t = time.perf_counter()
        encode_captions(text_encoder, entries)
        tm.caption_encode += time.perf_counter() - t
        t = time.perf_counter()
        while True:
            try:
                write_batch(store, entries, {"batches": report.batches + 1})
                break
            except NeedsVector as nv:  # rare: its twin was removed in this batch; encode it after all
                e = entries[nv.index]
                encoder.load()
                e.vector, c, prof = encode_batch(encoder, [e.decoded.array], with_concepts)
                e.vector, e.concepts, e.profile = e.vector[0], (c[0] if c else None), (prof[0] if prof else None)
        tm.write += time.perf_counter() - t
        report.batches += 1
        for e in entries:
            if e.op == "new":
                report.added += 1
            elif e.op == "alias":
                report.duplicates += 1
            elif e.op == "update":
                report.changed += 1
        entries, n_encode, batch_hashes = [], 0, set()
        if stop_after_batches is not None and report.batches >= stop_after_batches:
            raise BuildInterrupted(f"stopped after {report.batches} batches (test hook)")

    pool = DecodePool(transform, workers=workers, timeout=timeout, max_pixels=max_pixels,
                      window=max(2 * batch_size, 8 * max(workers, 1)))
    try:
        results = pool.imap(todo_items()) if todo else iter(())  # files appearing now wait for the next update
        while True:
            t = time.perf_counter()
            d = next(results, None)
            tm.decode_wait += time.perf_counter() - t
            if d is None:
                break
            tm.decode_cpu += d.seconds
            e = plan_item(store, d, batch_hashes)
            if e.op == "fail":
                skipped(d.item.key, d.reason)
            if e.op != "new":
                e.decoded.array = None if e.op != "alias" else e.decoded.array
            entries.append(e)
            n_encode += e.op == "new"
            if bar is not None:
                bar.update(1)
            if n_encode >= batch_size or len(entries) >= 4 * batch_size:
                flush()
        flush()
    finally:
        report.decode_restarts += pool.restarts
        pool.close()
        if bar is not None:
            bar.close()

    # gone files: forget them (only after a complete scan, only with --prune, only when verifiably gone)
    t = time.perf_counter()
    report.removed += sweep(store, seen, pruner=pruner)
    report.missing = pruner.missing
    report.kept = sum(pruner.kept.values())
    for line in pruner.warnings():
        say(line)
    tm.sweep += time.perf_counter() - t
    tm.total += time.perf_counter() - t_start
    return report


def _held(store: Store, pruner: Pruner, it) -> bool:
    """A Skip for a file the index holds (it vanished, or cannot be stat'ed now) is no failure: the
    item stays, and the sweep's rules decide whether it is gone. An unreadable folder is noted."""
    if not isinstance(it, Skip):
        return False
    pruner.saw(it.key, it.reason)
    return store.get_path(it.key) is not None


def _on_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def iter_batches(it: Iterable, n: int):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
