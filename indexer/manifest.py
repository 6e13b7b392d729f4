"""``INDEX/index.json``: what an index is (format, models, dims, FAISS setup, counts, timings).

Written atomically (temp file, fsync, rename) so a reader sees the old or the new
manifest, never half of one.
"""

from __future__ import annotations

import json
import os
import time

from retrieval import __version__
from retrieval.atomic import atomic_write_json
from retrieval.errors import IndexCorrupt, IndexNotFound

FORMAT = "kgclip-index"
FORMAT_VERSION = 2  # 2: lite indexes always hold concept profiles (1: the top-5 concepts only)
MANIFEST = "index.json"
METRIC = "inner_product"


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
    """Read and validate index.json: a clear error for a missing, malformed or newer-format file."""
    p = manifest_path(index_dir)
    if not os.path.isdir(index_dir):
        raise IndexNotFound(f"{index_dir}: no such index (build one with `kgclip build SOURCE -i {index_dir}`)")
    if not os.path.isfile(p):
        raise IndexNotFound(f"{index_dir}: not a kgclip index (no {MANIFEST} inside)")
    try:
        with open(p, encoding="utf-8") as fh:
            m = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorrupt(f"{p}: malformed manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexCorrupt(f"{p}: not a kgclip index manifest (format is not {FORMAT!r})")
    v = m.get("format_version")
    if not isinstance(v, int):
        raise IndexCorrupt(f"{p}: manifest has no integer format_version")
    if v > FORMAT_VERSION:
        raise IndexCorrupt(
            f"{p}: index format version {v} is newer than this kgclip supports ({FORMAT_VERSION}); upgrade kgclip"
        )
    if v < FORMAT_VERSION:
        raise IndexCorrupt(f"{p}: index format version {v} is older than this kgclip's ({FORMAT_VERSION}); "
                           f"rebuild it with `{rebuild_command(index_dir)}`")
    for key in ("model", "metric"):
        if key not in m:
            raise IndexCorrupt(f"{p}: manifest is missing {key!r}")
    if not isinstance(m["model"], dict) or "spec" not in m["model"] or "dim" not in m["model"]:
        raise IndexCorrupt(f"{p}: manifest 'model' must have 'spec' and 'dim'")
    for key in ("model", "text_model"):  # the types the readers rely on: a clear error, not a crash later
        mm = m.get(key)
        if mm is None and key == "text_model":
            continue
        if not isinstance(mm, dict) or not isinstance(mm.get("spec"), str) or not isinstance(mm.get("dim"), int) \
                or isinstance(mm.get("dim"), bool) or mm["dim"] <= 0:
            raise IndexCorrupt(f"{p}: manifest {key!r} must be an object with a string 'spec' and a positive "
                               f"integer 'dim' (got {json.dumps(mm)[:80]})")
    for key, kind in (("faiss", dict), ("options", dict), ("counts", dict), ("failures", dict),
                      ("timings", dict), ("sources", list)):
        if m.get(key) is not None and not isinstance(m[key], kind):
            raise IndexCorrupt(f"{p}: manifest {key!r} must be a JSON {'object' if kind is dict else 'list'}")
    for kind, info in (m.get("faiss") or {}).items():
        if not isinstance(info, dict):
            raise IndexCorrupt(f"{p}: manifest faiss.{kind} must be a JSON object")
    return m
