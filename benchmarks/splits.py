"""Standard splits as files: one image name a line (Flickr8k's ``train.txt`` / ``dev.txt`` / ``test.txt``).

:func:`apply_split_file` keeps a captioned dataset's images named in the file, in the file's order.
A line matches an image by its file name or by its path relative to the dataset (as written in the
manifest); names that match no image are counted and reported by the caller as one warning line.
"""

from __future__ import annotations

import os
from pathlib import Path

from retrieval.errors import SourceError

# the full Flickr8k with its standard splits (train.txt / dev.txt / test.txt), read in place
FLICKR8K = Path(os.environ.get("KGCLIP_FLICKR8K",
                               Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"))


def read_split_file(path) -> list[str]:
    """The names in a split file (blank lines and ``#`` comments skipped; duplicates kept once)."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: no such split file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{p}: not UTF-8 text (byte {e.start}): expected one image name a line") from None
    names: dict[str, None] = {}
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            names.setdefault(s, None)
    if not names:
        raise SourceError(f"{p}: no image names (expected one a line)")
    return list(names)


def apply_split_file(ds, path):
    """(the images of CaptionDataset ``ds`` named in ``path`` with their captions, the names matching no image)."""
    names = read_split_file(path)
    by_name: dict[str, int] = {}
    for i, img in enumerate(ds.images):
        by_name.setdefault(Path(img).name, i)
        by_name.setdefault(str(img), i)
    root = ds.meta.get("source")
    if root:
        base = Path(root).parent
        for i, img in enumerate(ds.images):
            try:
                by_name.setdefault(str(Path(img).relative_to(base)), i)
            except ValueError:
                pass
    keep, missing, seen = [], [], set()
    for n in names:
        i = by_name.get(n, by_name.get(Path(n).name))
        if i is None:
            missing.append(n)
        elif i not in seen:
            seen.add(i)
            keep.append(i)
    if not keep:
        raise SourceError(f"{path}: none of its {len(names)} names is an image of {ds.name} "
                          f"(e.g. {names[0]!r})")
    return ds.subset(keep, f"{ds.name}-{Path(path).stem}"), missing
