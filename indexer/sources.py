"""Build sources -> a stream of :class:`Item` (or :class:`Skip` for what cannot be used).

A source is one of:

- a folder, walked recursively in sorted order; symlinks are followed, but a
  directory already visited (a symlink loop, or two links to one folder) is
  walked once, and broken or self-referencing links are reported;
- a single image file;
- a file list (``.txt``/``.lst`` or any other text file): one path per line,
  relative to the list's folder; blank lines and ``#`` comments are ignored;
- a manifest (``.csv``, ``.jsonl``/``.ndjson``, ``.parquet``) with a path column
  (``path``, ``image``, ``file``, ``filepath``, ``image_path`` or ``filename``),
  optional caption column(s) (``caption``, ``captions``, ``text``) and any other
  columns kept as metadata; rows naming the same path are merged (their
  captions collected), paths are relative to the manifest's folder;
- a webdataset shard (``.tar``): members grouped by key (the name before the
  first dot of the basename); the image member is indexed, ``.txt`` /
  ``.caption`` members become captions and a ``.json`` member becomes metadata
  (its ``caption``/``captions``/``text`` fields become captions).

When ``root`` is given, every path must resolve inside it (manifest and list
entries that escape it are skipped, never read).

Everything here is pure and picklable: an :class:`Item` carries what a decode
worker needs to read the bytes (a file path, or a shard path plus offset).
"""

from __future__ import annotations

import csv
import json
import os
import stat as statmod
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from retrieval.errors import SourceError
from retrieval.text import MAX_ROW_DEPTH, TooDeep, json_depth, loads_bounded
from retrieval.text import read_jsonl_rows as _jsonl_rows

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MANIFEST_EXTS = {".csv", ".jsonl", ".ndjson", ".parquet"}
PATH_COLUMNS = ("path", "image", "file", "filepath", "image_path", "filename")
CAPTION_COLUMNS = ("caption", "captions", "text")
TEXT_MEMBER_EXTS = {"txt", "caption", "cap"}


@dataclass
class Item:
    """One image to index. ``key`` is its identity in the store (an absolute path,
    or ``/abs/shard.tar#member``); ``path`` is where its bytes are."""

    key: str
    path: str
    size: int = -1
    mtime_ns: int = -1
    offset: int = -1  # >= 0: the bytes are path[offset : offset + size] (a tar member)
    captions: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass
class Skip:
    """Something a source names that cannot be indexed, with the reason."""

    key: str
    reason: str


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def source_kind(source: str) -> str:
    p = Path(source)
    if p.is_dir():
        return "folder"
    if not p.exists():
        raise SourceError(f"source {source}: no such file or folder")
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in MANIFEST_EXTS:
        return "manifest"
    if ext == ".tar":
        return "webdataset"
    return "list"


def iter_sources(sources: Iterable[str], root: str | None = None, base: str | None = None) -> Iterator[Item | Skip]:
    """Items of every source in order; a key named twice is yielded once."""
    sources = [str(s) for s in sources]
    # one folder walk yields each path once (a folder reached twice is walked once) and a manifest
    # merges its rows per path: only other sources keep the set of keys seen (~170 bytes a path)
    unique = len(sources) == 1 and source_kind(sources[0]) in ("folder", "manifest", "image")
    seen: set[str] = set()
    for src in sources:
        for it in iter_source(src, root=root, base=base):
            if not _is_utf8(it.key):  # a name in another encoding: the store keys, logs and output are UTF-8
                it = Skip(it.key.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                          "file name is not valid UTF-8 (rename the file to index it)")
            if not unique:
                if it.key in seen:
                    continue
                seen.add(it.key)
            yield it


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def iter_source(source: str, root: str | None = None, base: str | None = None) -> Iterator[Item | Skip]:
    """One source's items; ``base`` replaces the manifest's folder for relative manifest paths."""
    kind = source_kind(source)
    if kind == "folder":
        yield from iter_folder(source)
    elif kind == "image":
        yield _file_item(os.path.abspath(source))
    elif kind == "manifest":
        yield from iter_manifest(source, root=root, base=base)
    elif kind == "webdataset":
        yield from iter_webdataset(source)
    else:
        yield from iter_file_list(source, root=root)


# -- files and folders ---------------------------------------------------------------
def _file_item(path: str, captions=None, meta=None) -> Item | Skip:
    """Stat ``path`` (following links) into an Item, or a Skip saying why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return Skip(path, "broken symlink")
        return Skip(path, "no such file")
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return Skip(path, "symlink loop")
        return Skip(path, f"cannot stat: {e.strerror or e}")
    if statmod.S_ISDIR(st.st_mode):
        return Skip(path, "is a folder, not an image file")
    if not statmod.S_ISREG(st.st_mode):
        return Skip(path, "not a regular file")
    return Item(path, path, st.st_size, st.st_mtime_ns, captions=list(captions or []), meta=dict(meta or {}))


def iter_folder(folder: str) -> Iterator[Item | Skip]:
    """Image files under ``folder``, recursively, sorted; symlinked folders walked once."""
    top = os.path.abspath(folder)
    visited: set[tuple[int, int]] = set()

    def walk(d: str) -> Iterator[Item | Skip]:
        try:
            st = os.stat(d)
        except OSError as e:
            yield Skip(d, f"cannot read folder: {e.strerror or e}")
            return
        ident = (st.st_dev, st.st_ino)
        if ident in visited:  # a symlink loop or a second link to a folder already walked
            return
        visited.add(ident)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Skip(d, f"cannot read folder: {e.strerror or e}")
            return
        for e in entries:
            p = os.path.join(d, e.name)
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from walk(p)
            elif is_image_name(e.name):
                yield _file_item(p)

    yield from walk(top)


def _check_root(path: str, root: str | None) -> str | None:
    if root is None:
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return f"path escapes the allowed root {root}"
    return None


def _resolve(base: str, entry: str, root: str | None) -> tuple[str, str | None]:
    p = os.path.expanduser(entry.strip())
    p = os.path.abspath(p if os.path.isabs(p) else os.path.join(base, p))
    return p, _check_root(p, root)


def iter_file_list(list_file: str, root: str | None = None) -> Iterator[Item | Skip]:
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        fh = open(list_file, encoding="utf-8", errors="strict")
        with fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                path, bad = _resolve(base, line, root)
                yield Skip(path, bad) if bad else _file_item(path)
    except UnicodeDecodeError as e:
        raise SourceError(f"{list_file}: not a UTF-8 text file of paths ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SourceError(f"{list_file}: cannot read: {e.strerror or e}") from None


# -- manifests -----------------------------------------------------------------------
def _rows_csv(path: str) -> Iterator[tuple[int, dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise SourceError(f"{path}: empty CSV manifest (no header row)")
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 CSV ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise SourceError(f"{path}: malformed CSV: {e}") from None


def read_jsonl_rows(path: str | os.PathLike, skip_deep: bool = False) -> Iterator[tuple[int, dict | Skip]]:
    """:func:`retrieval.text.read_jsonl_rows`, with a row nested too deeply as a :class:`Skip` (``skip_deep``)."""
    for lineno, row in _jsonl_rows(path, skip_deep=skip_deep):
        yield lineno, Skip(f"{path}:{lineno}", str(row)) if isinstance(row, TooDeep) else row


def _rows_parquet(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SourceError(f"{path}: not a readable Parquet file: {e}") from None
    def strings_for_times(t):  # timestamp[ns] has no Python datetime: times as ISO-like strings, nested too
        if pa.types.is_temporal(t):
            return pa.string()
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, strings_for_times(f.type)) for f in t])
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return (pa.list_ if pa.types.is_list(t) else pa.large_list)(strings_for_times(t.value_type))
        return t

    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        try:
            cols = [c if strings_for_times(c.type) == c.type else pc.cast(c, strings_for_times(c.type))
                    for c in batch.columns]
        except (pa.ArrowException, ValueError) as e:
            raise SourceError(f"{path}: a column's type cannot be read ({str(e).splitlines()[0][:120]})") from None
        for row in pa.RecordBatch.from_arrays(cols, names=batch.schema.names).to_pylist():
            n += 1
            too_deep = json_depth(row) > MAX_ROW_DEPTH  # nested structs: the row is skipped, not the build
            yield n, (Skip(f"{path}:{n}", f"nested more than {MAX_ROW_DEPTH} levels deep") if too_deep else row)


def _find_column(cols: Iterable[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in cols}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _as_captions(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    s = str(v).strip()
    return [s] if s else []


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def iter_manifest(
    manifest: str,
    root: str | None = None,
    base: str | None = None,
    path_column: str | None = None,
    caption_columns: list[str] | None = None,
) -> Iterator[Item | Skip]:
    """Rows of a CSV/JSONL/Parquet manifest, merged per path (captions collected), in first-seen order."""
    ext = Path(manifest).suffix.lower()
    rows = {".csv": _rows_csv, ".parquet": _rows_parquet}.get(ext, lambda p: read_jsonl_rows(p, skip_deep=True))(manifest)
    mdir = os.path.dirname(os.path.abspath(manifest))
    base = os.path.abspath(base) if base else mdir
    images_dir = os.path.join(mdir, "images")
    merged: dict[str, Item | Skip] = {}
    pcol = path_column
    ccols = caption_columns
    for lineno, row in rows:
        if isinstance(row, Skip):
            yield row
            continue
        if pcol is None:
            pcol = _find_column(row.keys(), PATH_COLUMNS)
            if pcol is None:
                raise SourceError(
                    f"{manifest}: no path column (expected one of {', '.join(PATH_COLUMNS)}; "
                    f"found {', '.join(map(str, row.keys())) or 'none'})"
                )
        if ccols is None:
            ccols = [c for c in row.keys() if c.lower() in CAPTION_COLUMNS]
        raw = row.get(pcol)
        if raw is None or not str(raw).strip():
            yield Skip(f"{manifest}:{lineno}", f"empty {pcol!r} value")
            continue
        path, bad = _resolve(base, str(raw), root)
        if not os.path.isabs(str(raw).strip()) and not os.path.lexists(path) and os.path.isdir(images_dir):
            alt, alt_bad = _resolve(images_dir, str(raw), root)  # the common DATASET/images/ layout
            if os.path.lexists(alt):
                path, bad = alt, alt_bad
        caps = [c for col in ccols for c in _as_captions(row.get(col))]
        if path in merged:
            it = merged[path]
            if isinstance(it, Item):
                it.captions.extend(c for c in caps if c not in it.captions)
            continue
        if bad:
            merged[path] = Skip(path, bad)
            continue
        meta = {str(k): _jsonable(v) for k, v in row.items() if k != pcol and k not in ccols}
        merged[path] = _file_item(path, captions=list(dict.fromkeys(caps)), meta=meta)
    yield from merged.values()


# -- webdataset ----------------------------------------------------------------------
def _wds_key(name: str) -> tuple[str, str]:
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def iter_webdataset(shard: str) -> Iterator[Item | Skip]:
    """Samples of a webdataset ``.tar`` shard (members grouped by key, in order)."""
    shard = os.path.abspath(shard)
    groups: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _wds_key(m.name)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = {"image": None, "captions": [], "meta": {}}
                    order.append(key)
                if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTS and g["image"] is None:
                    g["image"] = m
                elif ext in TEXT_MEMBER_EXTS:
                    text = tf.extractfile(m).read(1 << 20).decode("utf-8", "replace").strip()
                    if text:
                        g["captions"].append(text)
                elif ext == "json":
                    try:
                        text = tf.extractfile(m).read(1 << 22).decode("utf-8", "replace")
                        obj = loads_bounded(text, MAX_ROW_DEPTH)
                    except json.JSONDecodeError:
                        obj = None
                    except TooDeep:
                        obj = None
                        g["skip"] = f"its {m.name} is JSON nested more than {MAX_ROW_DEPTH} levels deep"
                    if isinstance(obj, dict):
                        for c in CAPTION_COLUMNS:
                            g["captions"].extend(_as_captions(obj.pop(c, None)))
                        g["meta"].update({str(k): _jsonable(v) for k, v in obj.items()})
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{shard}: not a readable tar shard: {e}") from None
    for key in order:
        g = groups[key]
        m = g["image"]
        if g.get("skip"):
            yield Skip(f"{shard}#{key}", f"webdataset sample skipped: {g['skip']}")
            continue
        if m is None:
            yield Skip(f"{shard}#{key}", "webdataset sample has no image member")
            continue
        yield Item(
            f"{shard}#{m.name}", shard, m.size, int(m.mtime * 1e9), offset=m.offset_data,
            captions=list(dict.fromkeys(g["captions"])), meta=g["meta"],
        )


def read_bytes(item: Item, limit: int | None = None) -> tuple[bytes, int, int]:
    """The item's bytes plus (size, mtime_ns) as read (not as scanned: files change)."""
    if item.offset >= 0:
        with open(item.path, "rb") as fh:
            fh.seek(item.offset)
            data = fh.read(item.size)
        if len(data) != item.size:
            raise OSError("tar member is truncated")
        return data, item.size, item.mtime_ns
    with open(item.path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if statmod.S_ISDIR(st.st_mode):
            raise IsADirectoryError("is a folder")
        if limit is not None and st.st_size > limit:  # refuse before reading, not after (memory)
            raise ValueError(f"file larger than {limit} bytes")
        data = fh.read() if limit is None else fh.read(limit + 1)
    return data, len(data), st.st_mtime_ns


__all__ = ["Item", "Skip", "iter_sources", "iter_source", "source_kind", "read_bytes"]
