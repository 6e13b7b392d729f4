"""``INDEX/index.json``: what an index is (format, models, dims, FAISS setup, counts, timings).

Written atomically (temp file, fsync, rename) so a reader sees the old or the new
manifest, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import time

from retrieval import __version__
from retrieval.atomic import atomic_write_json
from retrieval.choices import INDEX_TYPES
from retrieval.errors import IndexCorrupt, IndexNotFound
from retrieval.safefile import MB, read_json_capped

log = logging.getLogger(__name__)

FORMAT = "kgclip-index"
FORMAT_VERSION = 2  # 2: lite indexes always hold concept profiles (1: the top-5 concepts only)
MANIFEST = "index.json"
METRIC = "inner_product"
MAX_MANIFEST_BYTES = 8 * MB  # a manifest is a few KB; a 3 GB "index.json" is refused before it is read
MAX_MANIFEST_VALUES = 200_000
MAX_DIM = 1 << 16
MAX_RECORDED_BATCH = 1024


def rebuild_command(index_dir: str) -> str:
    """The command that rebuilds an index from scratch (named by errors about old or broken indexes)."""
    return f"kgclip build SOURCES -i {index_dir} --restart"


def manifest_path(index_dir: str) -> str:
    return os.path.join(index_dir, MANIFEST)


def new_manifest(model: dict, text_model: dict | None, sources: list[str], options: dict) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kgclip_version": __version__,
        "model": model,  # {"spec", "fingerprint", "dim"}
        "text_model": text_model,  # same keys, or None when captions are not embedded
        "metric": METRIC,
        "state": "building",
        "created": now,
        "updated": now,
        "sources": sources,
        "options": options,
        "generation": 0,
        "faiss": {},
        "counts": {},
        "failures": {},
        "timings": {},
    }


def write_manifest(index_dir: str, manifest: dict) -> None:
    """Atomic replace of index.json (callers hold the write lock; temp files of a killed write are removed;
    a link planted at index.json is replaced, never followed)."""
    for n in os.listdir(index_dir):
        if n.startswith(".index.json."):
            try:
                os.unlink(os.path.join(index_dir, n))
            except OSError:
                pass
    atomic_write_json(manifest_path(index_dir), manifest, indent=2)  # a full disk: DiskFull naming the file


def read_manifest(index_dir: str) -> dict:
    """Read and validate index.json: a clear error for a missing, malformed or newer-format file.

    The file is read as untrusted (shared indexes): a regular file only (a FIFO or a symbolic link is
    refused), at most :data:`MAX_MANIFEST_BYTES`, and every field a reader uses is checked for type
    and range (:func:`check_manifest`).
    """
    p = manifest_path(index_dir)
    if not os.path.isdir(index_dir):
        raise IndexNotFound(f"{index_dir}: no such index (build one with `kgclip build SOURCE -i {index_dir}`)")
    if not os.path.lexists(p):
        raise IndexNotFound(f"{index_dir}: not a kgclip index (no {MANIFEST} inside)")
    m = read_json_capped(p, MAX_MANIFEST_BYTES, "manifest", max_depth=16, max_values=MAX_MANIFEST_VALUES,
                         nofollow=True, error=IndexCorrupt)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexCorrupt(f"{p}: not a kgclip index manifest (format is not {FORMAT!r})")
    v = m.get("format_version")
    if not _is_int(v):
        raise IndexCorrupt(f"{p}: manifest has no integer format_version")
    if v > FORMAT_VERSION:
        raise IndexCorrupt(
            f"{p}: index format version {v} is newer than this kgclip supports ({FORMAT_VERSION}); upgrade kgclip"
        )
    if v < FORMAT_VERSION:
        raise IndexCorrupt(f"{p}: index format version {v} is older than this kgclip's ({FORMAT_VERSION}); "
                           f"rebuild it with `{rebuild_command(index_dir)}`")
    check_manifest(m, p)
    return m


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


def check_manifest(m: dict, p: str) -> None:
    """Type and range of every manifest field a reader relies on; raises :class:`IndexCorrupt` naming the
    field, and clamps a recorded batch size above :data:`MAX_RECORDED_BATCH` (with a one-line warning).
    Tuned search parameters are clamped where the index is opened
    (:func:`indexer.faiss.check.safe_params`)."""

    def bad(field: str, want: str, got) -> IndexCorrupt:
        return IndexCorrupt(f"{p}: manifest field {field} must be {want} (got {json.dumps(got)[:60]})")

    for key in ("model", "metric"):
        if key not in m:
            raise IndexCorrupt(f"{p}: manifest is missing {key!r}")
    if not isinstance(m["model"], dict) or "spec" not in m["model"] or "dim" not in m["model"]:
        raise IndexCorrupt(f"{p}: manifest 'model' must have 'spec' and 'dim'")
    for key in ("model", "text_model"):  # the types the readers rely on: a clear error, not a crash later
        mm = m.get(key)
        if mm is None and key == "text_model":
            continue
        if not isinstance(mm, dict) or not isinstance(mm.get("spec"), str) or not _is_int(mm.get("dim")) \
                or not 0 < mm["dim"] <= MAX_DIM:
            raise IndexCorrupt(f"{p}: manifest {key!r} must be an object with a string 'spec' and an integer "
                               f"'dim' in 1..{MAX_DIM} (got {json.dumps(mm)[:80]})")
        if mm.get("fingerprint") is not None and not isinstance(mm["fingerprint"], str):
            raise bad(f"{key}.fingerprint", "a string", mm["fingerprint"])
        prof = mm.get("profile")
        if prof is not None and (not isinstance(prof, dict) or not all(
                _is_num(prof.get(f)) and 0 < prof[f] <= 100_000 for f in ("top", "temperature"))):
            raise bad(f"{key}.profile", "an object with positive numbers 'top' and 'temperature'", prof)
    if m["metric"] != METRIC:
        raise bad("metric", repr(METRIC), m["metric"])
    for key, kind in (("faiss", dict), ("options", dict), ("counts", dict), ("failures", dict),
                      ("timings", dict), ("sources", list)):
        if m.get(key) is not None and not isinstance(m[key], kind):
            raise IndexCorrupt(f"{p}: manifest {key!r} must be a JSON {'object' if kind is dict else 'list'}")
    if not all(isinstance(s, str) for s in m.get("sources") or []):
        raise bad("sources", "a list of strings", m["sources"])
    for key in ("state", "created", "updated", "kgclip_version"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise bad(key, "a string", m[key])
    if m.get("generation") is not None and not (_is_int(m["generation"]) and m["generation"] >= 0):
        raise bad("generation", "a non-negative integer", m["generation"])
    for k, n in (m.get("counts") or {}).items():
        if not (_is_int(n) and n >= 0):
            raise bad(f"counts.{k}", "a non-negative integer", n)
    for k, t in (m.get("timings") or {}).items():
        if t is not None and not _is_num(t):
            raise bad(f"timings.{k}", "a number", t)
    fails = m.get("failures") or {}
    if fails.get("total") is not None and not (_is_int(fails["total"]) and fails["total"] >= 0):
        raise bad("failures.total", "a non-negative integer", fails["total"])
    reasons = fails.get("by_reason")
    if reasons is not None and (not isinstance(reasons, dict)
                                or not all(_is_int(n) for n in reasons.values())):
        raise bad("failures.by_reason", "an object of counts", reasons)
    _check_options(m.get("options") or {}, bad, p)
    for kind, info in (m.get("faiss") or {}).items():
        if not isinstance(info, dict):
            raise IndexCorrupt(f"{p}: manifest faiss.{kind} must be a JSON object")
        _check_faiss(kind, info, bad)


def _check_options(opts: dict, bad, p: str = "") -> None:
    if opts.get("index_type") is not None and opts["index_type"] not in INDEX_TYPES:
        raise bad("options.index_type", f"one of {', '.join(INDEX_TYPES)}", opts["index_type"])
    v = opts.get("batch_size")  # `update` decodes this many images at once: a shared index cannot ask more
    if _is_int(v) and v > MAX_RECORDED_BATCH:
        opts["batch_size"] = MAX_RECORDED_BATCH
        log.warning("warning: %s: options.batch_size = %d is more than %d; using %d (pass --batch-size to "
                    "choose)", p, v, MAX_RECORDED_BATCH, MAX_RECORDED_BATCH)
    for key, lo, hi in (("batch_size", 1, 1 << 16), ("max_memory", 0, 1 << 60), ("max_pixels", 1, 1 << 40)):
        v = opts.get(key)
        if v is not None and not (_is_int(v) and lo <= v <= hi):
            raise bad(f"options.{key}", f"an integer in {lo}..{hi}", v)
    v = opts.get("timeout_per_file")
    if v is not None and not (_is_num(v) and v > 0):
        raise bad("options.timeout_per_file", "a positive number", v)
    for key in ("root", "base"):
        if opts.get(key) is not None and not isinstance(opts[key], str):
            raise bad(f"options.{key}", "a string", opts[key])


def _check_faiss(kind: str, info: dict, bad) -> None:
    for key in ("generation", "n", "dim"):
        v = info.get(key)
        if v is not None and not (_is_int(v) and v >= 0):
            raise bad(f"faiss.{kind}.{key}", "a non-negative integer", v)
    for key in ("file", "kind", "factory"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise bad(f"faiss.{kind}.{key}", "a string", info[key])
    if info.get("rerank") is not None and not isinstance(info["rerank"], bool):
        raise bad(f"faiss.{kind}.rerank", "true or false", info["rerank"])
    params = info.get("params")  # their ranges: indexer.faiss.check.safe_params, which knows the index
    if params is not None and not isinstance(params, dict):
        raise bad(f"faiss.{kind}.params", "an object", params)
