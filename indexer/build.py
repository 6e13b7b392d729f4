"""Build and update an index folder: sources -> decode -> encode -> store -> FAISS.

:func:`build_index` runs these steps, each a function below:

1. :func:`_check_request` -- sources exist, the folder is one kgclip may write (nothing written yet)
2. :func:`_open_folder` -- the write lock, ``--restart``'s wipe, the store
3. :func:`_check_sources_have_images` -- each newly named source holds at least one image
4. :func:`_check_models` -- the models (and index format) match what the index was built with
5. :func:`_record_start` -- models, sources and options in the store; the manifest
6. :func:`_ingest` -- :func:`indexer.pipeline.run`: new and changed files encoded, gone ones swept
7. :func:`_derive_faiss_files` -- the FAISS files brought up to the store's generation
8. :func:`_finish` -- state, counts and timings in the manifest; the report

:func:`update_index` re-runs the build over the sources and options the index recorded.
A first build that fails before committing anything leaves no half-made folder behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from retrieval.encoders import get_encoder
from retrieval.encoders.onnx import no_spinning
from retrieval.errors import IndexCorrupt, IndexNotFound, ModelMismatch, SourceError, UsageError

from . import pipeline
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT
from .derive import FAISS_FILES, derive_faiss, faiss_generation
from .manifest import (FORMAT_VERSION, MANIFEST, MAX_RECORDED_BATCH, manifest_path, new_manifest, read_manifest,
                       rebuild_command, write_manifest)
from .report import BuildReport
from .sources import IMAGE_EXTS, iter_source, source_kind
from .store import LOCK_FILE, STORE_DIR, Store, WriteLock


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class BuildOptions:
    """How to build; every field is also a keyword of :func:`build_index`."""

    model: str = "lite"
    text_model: str | None = "sbert:minilm"
    batch_size: int = 32
    workers: int | None = None  # decode processes (None: one per core but one, at most 8)
    device: str = "auto"
    index_type: str = "auto"
    max_memory: int | None = None
    resume: bool = True  # False: start over (--restart)
    progress: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_per_file: float = DEFAULT_TIMEOUT
    root: str | None = None
    base: str | None = None
    stop_after_batches: int | None = None  # tests: stop as if interrupted after this many batches
    log: Callable[[str], None] | None = None
    map_size: int | None = None
    quiet: bool = False
    prune: bool = False  # remove stored files that are verifiably gone (indexer.prune); else keep them
    yes: bool = False  # confirm removing more than half of the index (and an emptied source's items)
    # update: the models come from this index's manifest, not from the user: local or shipped files only
    # unless KGCLIP_ALLOW_DOWNLOAD=1 (retrieval.encoders.base.Encoder.named_by)
    models_named_by: str | None = None

    def recorded(self) -> dict:
        """The options an index records (``update`` reuses them)."""
        return {"batch_size": self.batch_size, "index_type": self.index_type, "max_memory": self.max_memory,
                "max_pixels": self.max_pixels, "timeout_per_file": self.timeout_per_file, "root": self.root,
                "base": os.path.abspath(self.base) if self.base else None}

    def say(self, line: str) -> None:
        (self.log or (lambda s: print(s, file=sys.stderr)))(line)


@dataclass
class _Build:
    """What the steps share: the folder, its lock and store, the models and what the index records."""

    index_dir: str
    opts: BuildOptions
    sources: list[str]
    fresh: bool  # the folder was missing or empty: a failed first build removes what it made
    created: bool
    lock: WriteLock | None = None
    store: Store | None = None
    stored: dict = field(default_factory=dict)  # the store's meta before this run
    encoder: object = None
    text_encoder: object = None
    minfo: dict = field(default_factory=dict)
    tinfo: dict | None = None
    manifest: dict = field(default_factory=dict)
    report: BuildReport | None = None
    t_load: float = 0.0


def build_index(sources: Sequence[str], index_dir: str, options: BuildOptions | None = None,
                **kwargs) -> BuildReport:
    """Index ``sources`` into ``index_dir``; re-running continues or updates (``resume=False`` starts over).

    The result equals a fresh build of the same files: unchanged files keep their ids and vectors,
    new or changed ones are encoded; gone ones are removed with ``prune=True`` (else kept and
    counted as missing; :mod:`indexer.prune`). ``kwargs`` are :class:`BuildOptions`
    fields (``model=``, ``text_model=``, ``batch_size=``, ...). A newly named source without a
    single image is a :class:`SourceError` (almost always a wrong path).
    """
    opts = options or BuildOptions(**kwargs)
    if options is not None and kwargs:
        raise TypeError("build_index: pass options= or keywords, not both")
    return _run(sources, index_dir, opts, check_empty=True)


def update_index(index_dir: str, **kwargs) -> BuildReport:
    """Re-scan the index's sources: encode new/changed files (same models as the build); with
    ``prune=True``, drop files that are verifiably gone.

    A source that has become missing, empty or unreadable is legal here: its items are kept and a
    warning names it (an unmounted drive must not wipe the library).
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)
    store = Store(index_dir, readonly=True)
    try:
        sources = store.meta("sources") or m.get("sources") or []
        options = store.meta("options") or m.get("options") or {}
        model = (store.meta("model") or m["model"])["spec"]
        tm = store.all_meta().get("text_model", "unset")
        text = (tm if tm != "unset" else m.get("text_model")) or None
    finally:
        store.close()
    user_batch = kwargs.get("batch_size")
    for k in ("index_type", "max_memory", "max_pixels", "timeout_per_file", "batch_size", "root", "base"):
        if k in options and options[k] is not None and kwargs.get(k) is None:
            kwargs[k] = options[k]
    if user_batch is None and isinstance(kwargs.get("batch_size"), int):  # recorded: bounded (shared indexes)
        kwargs["batch_size"] = max(1, min(kwargs["batch_size"], MAX_RECORDED_BATCH))
    kwargs.pop("model", None)
    kwargs.pop("text_model", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    opts = BuildOptions(model=model, text_model=text["spec"] if text else None,
                        models_named_by=f"the index manifest {manifest_path(index_dir)}", **dict(kwargs, resume=True))
    return _run(sources, index_dir, opts, check_empty=False)


def _run(sources: Sequence[str], index_dir: str, opts: BuildOptions, check_empty: bool) -> BuildReport:
    t_all = time.perf_counter()
    b = _check_request(sources, index_dir, opts, named=check_empty)
    try:
        _open_folder(b)
        if check_empty:
            _check_sources_have_images(b)  # before the models load: an empty source fails at once
        _check_models(b)
        _record_start(b)
        _ingest(b)
        _derive_faiss_files(b)
        _finish(b, t_all)
        return b.report
    except BaseException:
        _discard_failed_first_build(b)
        raise
    finally:
        if b.store is not None:
            b.store.close()
        if b.lock is not None:
            b.lock.release()


# -- the steps ---------------------------------------------------------------------------------
def _check_request(sources: Sequence[str], index_dir: str, opts: BuildOptions, named: bool = True) -> _Build:
    """Sources and folder checked before anything is written; the folder made; the models named.

    ``named``: the sources come from the command line (a missing one is an error); an update's
    recorded sources may be missing (an unmounted drive: their items are kept, with a warning)."""
    sources = [os.path.abspath(os.fspath(s)) for s in sources]
    if not sources:
        raise UsageError("no sources given: name at least one folder, file list, manifest or .tar shard")
    if opts.batch_size < 1:
        raise UsageError(f"batch size must be at least 1 (got {opts.batch_size})")
    for s in sources if named else ():
        source_kind(s)  # a clear error for a missing source, before anything is written
    index_dir = os.path.abspath(os.fspath(index_dir))
    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise UsageError(f"{index_dir} exists and is not a folder")
    if os.path.isdir(index_dir) and os.listdir(index_dir) and not _is_index_dir(index_dir) \
            and os.listdir(index_dir) != [LOCK_FILE]:
        raise UsageError(f"{index_dir} is a non-empty folder that is not a kgclip index; choose another -i")
    created = not os.path.exists(index_dir)
    fresh = created or not [n for n in os.listdir(index_dir) if n != LOCK_FILE]
    os.makedirs(index_dir, exist_ok=True)
    b = _Build(index_dir, opts, sources, fresh=fresh, created=created)
    b.encoder = get_encoder(opts.model, device=opts.device, batch_size=opts.batch_size)
    if opts.text_model:
        b.text_encoder = get_encoder(opts.text_model, device=opts.device, batch_size=max(opts.batch_size, 64))
    if opts.models_named_by:
        for enc in (b.encoder, b.text_encoder):
            if enc is not None:
                enc.named_by = opts.models_named_by
    if not b.encoder.has_images:
        raise UsageError(f"{opts.model} encodes text only; pick an image model for --model")
    return b


def _open_folder(b: _Build) -> None:
    """Take the write lock, wipe the folder for ``--restart``, open (or create) the store."""
    b.lock = WriteLock(b.index_dir).acquire()
    if not b.opts.resume:
        _wipe(b.index_dir)
    t = time.perf_counter()
    b.store = Store(b.index_dir, create=True, map_size=b.opts.map_size)
    b.stored = b.store.all_meta()
    b.t_load += time.perf_counter() - t


def _check_models(b: _Build) -> None:
    """The index format and models match what the index was built with (a known model is not loaded
    just to learn its dim: loading waits until something needs encoding)."""
    old_m, old_t = b.stored.get("model"), b.stored.get("text_model", "unset")
    index_dir, encoder = b.index_dir, b.encoder
    if old_m is not None and b.stored.get("format_version") != FORMAT_VERSION:
        raise IndexCorrupt(f"{index_dir} has index format {b.stored.get('format_version')}, this kgclip writes "
                           f"{FORMAT_VERSION}: rebuild it with `{rebuild_command(index_dir)}`")
    t = time.perf_counter()
    minfo = dict(old_m) if old_m and old_m.get("fingerprint") == encoder.fingerprint else _model_info(encoder)
    b.t_load += time.perf_counter() - t
    if old_m is not None and not _same_model(old_m, minfo) and old_m.get("spec") == minfo["spec"]:
        raise ModelMismatch(
            f"{index_dir} was built with {old_m.get('fingerprint')}, but {minfo['spec']} is now "
            f"{minfo['fingerprint']} (its weights or configuration changed): rebuild with --restart"
        )
    if old_m is not None and not _same_model(old_m, minfo):
        raise ModelMismatch(
            f"{index_dir} was built with model {old_m['spec']} ({old_m.get('fingerprint')}); "
            f"you asked for {minfo['spec']} ({minfo['fingerprint']}): use --restart or another index folder"
        )
    profile = encoder.profile_record()  # lite: the soft concept profiles its grounding reads; else None
    if profile is not None:
        if old_m is None:
            minfo["profile"] = profile
        elif not minfo.get("profile"):
            raise IndexCorrupt(f"{index_dir} has no concept profiles (an index from before them): "
                               f"rebuild it with `{rebuild_command(index_dir)}`")
    t = time.perf_counter()
    text_encoder = b.text_encoder
    if text_encoder is None:
        tinfo = None
    elif isinstance(old_t, dict) and old_t.get("fingerprint") == text_encoder.fingerprint:
        tinfo = dict(old_t)
    else:
        tinfo = _model_info(text_encoder)  # loads it (dim)
    b.t_load += time.perf_counter() - t
    if old_m is not None and old_t != "unset" and not _same_model(old_t, tinfo):
        was = old_t["spec"] if old_t else "no text model"
        now = tinfo["spec"] if tinfo else "no text model"
        raise ModelMismatch(f"{index_dir} was built with text model {was}; you asked for {now}: "
                            "use --restart or another index folder")
    b.minfo, b.tinfo = minfo, tinfo


def _check_sources_have_images(b: _Build) -> None:
    """Each source named now that the index does not hold yet yields at least one file (an empty
    source is almost always a wrong path). The walk stops at its first file."""
    known = set(b.stored.get("sources") or []) if b.opts.resume else set()
    for s in b.sources:
        if s in known:
            continue
        if next(iter_source(s, root=b.opts.root, base=b.opts.base), None) is None:
            kind = source_kind(s)
            where = "under it" if kind == "folder" else "in it"
            raise SourceError(f"source {s}: no images {where} (looked for {' '.join(sorted(IMAGE_EXTS))})")


def _record_start(b: _Build) -> None:
    """Models, sources and options in the store (state "building"); the manifest read or made."""
    if b.opts.resume and b.stored.get("sources"):
        # building into an existing index adds sources; the index keeps mirroring all of them
        b.sources = list(b.stored["sources"]) + [x for x in b.sources if x not in b.stored["sources"]]
    options = b.opts.recorded()

    def init(txn):
        txn.set_meta("format_version", FORMAT_VERSION)
        txn.set_meta("model", b.minfo)
        txn.set_meta("text_model", b.tinfo)
        txn.set_meta("sources", b.sources)
        txn.set_meta("options", options)
        txn.set_meta("state", "building")

    b.store.write(init, bump=False)
    try:
        b.manifest = read_manifest(b.index_dir)
    except (IndexNotFound, IndexCorrupt):  # corrupt: the store is the truth, rewrite it
        b.manifest = new_manifest(b.minfo, b.tinfo, b.sources, options)
        write_manifest(b.index_dir, b.manifest)


def _ingest(b: _Build) -> None:
    """Bring the store in line with the sources (:func:`indexer.pipeline.run`)."""
    opts = b.opts
    b.report = BuildReport(b.index_dir)
    b.report.timings.model_load = b.t_load
    try:
        with no_spinning():  # ONNX Runtime threads that spin would take CPU from the decode workers
            pipeline.run(
                b.store, b.encoder, b.text_encoder, b.sources, root=opts.root, base=opts.base,
                batch_size=opts.batch_size, workers=default_workers() if opts.workers is None else opts.workers,
                timeout=opts.timeout_per_file, max_pixels=opts.max_pixels, progress=opts.progress and not opts.quiet,
                log=opts.say, stop_after_batches=opts.stop_after_batches, report=b.report,
                prune=opts.prune, yes=opts.yes,
            )
    except KeyboardInterrupt:
        opts.say(f"interrupted after {b.report.batches} committed batches: run the same command again to continue")
        raise


def _derive_faiss_files(b: _Build) -> None:
    """Derive each FAISS file the store's generation does not match yet (or whose options changed)."""
    t = time.perf_counter()
    opts, manifest = b.opts, b.manifest
    faiss_info = {}
    gen = b.store.generation
    kinds = [("image", b.minfo["dim"], opts.index_type)] + ([("caption", b.tinfo["dim"], "auto")] if b.tinfo else [])
    for kind, dim, itype in kinds:
        old = (manifest.get("faiss") or {}).get(kind)
        if old and old.get("generation") == gen and faiss_generation(b.index_dir, kind) == gen \
                and (manifest.get("options") or {}).get("index_type") == opts.index_type \
                and (manifest.get("options") or {}).get("max_memory") == opts.max_memory:
            faiss_info[kind] = old  # nothing changed since it was derived
            continue
        _, faiss_info[kind] = derive_faiss(b.store, b.index_dir, kind, dim, itype, opts.max_memory)
    if b.tinfo is None:  # built without a text model: no caption index
        p = os.path.join(b.index_dir, FAISS_FILES["caption"])
        if os.path.exists(p):
            os.unlink(p)
    b.report.faiss = faiss_info
    b.report.timings.faiss += time.perf_counter() - t


def _finish(b: _Build, t_all: float) -> None:
    """State "complete", counts, failures and timings in the manifest; the summary line."""
    store, report = b.store, b.report
    store.write(lambda txn: txn.set_meta("state", "complete"), bump=False)
    report.timings.total = time.perf_counter() - t_all
    _fill_counts(store, report)
    b.manifest.update(
        model=b.minfo, text_model=b.tinfo, sources=b.sources, options=b.opts.recorded(), state="complete",
        generation=store.generation, faiss=report.faiss,
        counts={"items": report.items, "paths": report.paths, "captions": report.captions,
                "failures": report.failures_total},
        failures=_failure_summary(store),
        timings=report.timings.to_dict(),
        updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        last_build={k: v for k, v in report.to_dict().items() if k not in ("timings", "faiss", "index_dir")},
    )
    write_manifest(b.index_dir, b.manifest)
    if not b.opts.quiet:
        b.opts.say(report.summary())


def _discard_failed_first_build(b: _Build) -> None:
    """A first build that failed before committing anything (a malformed manifest, a model that cannot
    load, Ctrl-C during the scan, an empty source) leaves no half-made index folder behind."""
    store = b.store
    if not (b.fresh and store is not None and store.count("items") == 0 and store.count("fails") == 0):
        return
    store.close()
    b.store = None
    _wipe(b.index_dir)
    try:
        os.unlink(b.lock.path)  # while still holding it
    except OSError:
        pass
    b.lock.release()
    b.lock = None
    if b.created:
        try:  # only if empty: another process may have started using it meanwhile
            os.rmdir(b.index_dir)
        except OSError:
            pass


# -- helpers ------------------------------------------------------------------------------------
def _model_info(enc) -> dict:
    return {"spec": enc.spec, "fingerprint": enc.fingerprint, "dim": int(enc.dim)}


def _same_model(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.get("fingerprint") == b.get("fingerprint") and a.get("dim") == b.get("dim")


def _is_index_dir(d: str) -> bool:
    return os.path.isfile(os.path.join(d, MANIFEST)) or os.path.isdir(os.path.join(d, STORE_DIR))


def _wipe(index_dir: str) -> None:
    for name in os.listdir(index_dir):
        if name == LOCK_FILE:
            continue
        p = os.path.join(index_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _fill_counts(store: Store, report: BuildReport) -> None:
    report.items = store.count("items")
    report.paths = store.count("paths")
    report.captions = store.count("capvecs")
    report.failures_total = store.count("fails")


def _failure_summary(store: Store, examples: int = 20) -> dict:
    reasons: dict[str, int] = {}
    sample = []
    for key, f in store.iter_failures():
        r = pipeline.reason_kind(f["reason"])
        reasons[r] = reasons.get(r, 0) + 1
        if len(sample) < examples:
            sample.append({"path": key, "reason": f["reason"]})
    return {"total": sum(reasons.values()), "by_reason": reasons, "examples": sample}
