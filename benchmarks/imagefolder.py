"""Category sets from an ImageFolder layout (``DIR/<class name>/*.jpg``, torchvision's and CLIP_benchmark's).

:func:`scan` finds the classes and their images (a seeded ``per_class`` sample of large folders; empty
classes, loose files and unreadable images skipped and counted); :func:`link_classes` ties each
folder name to a KG entity with kgclip's own linker (a class map overrides; unlinked classes are
listed and left out); :func:`category_set` turns that into a :class:`benchmarks.datasets.CategorySet`:

- ``class`` queries: the bare class name ("golden retriever");
- ``prompt`` queries: "a photo of a {class}";
- ``hypernym`` queries: the name of every KG ancestor 1-3 ``hypernym`` steps above a class that
  covers at least two of the set's classes ("carnivore", "motor vehicle"), except one above every
  class (every image relevant: it would score AP 1 whatever the ranking).

An image is relevant to a query when its class's entity is the query's entity or lies below it
(any number of hypernym steps), so a "dog" query also counts the set's "poodle" images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import SourceError

UP = ("hypernym", "instance_hypernym")
PROMPT = "a photo of a {}"


@dataclass
class Folder:
    """The usable classes of an ImageFolder (name -> image paths) and what was skipped."""

    root: Path
    classes: dict[str, list[Path]]
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def class_text(folder_name: str) -> str:
    """A folder name as a query phrase: ``golden_retriever`` -> ``golden retriever`` (hyphens kept: T-shirt)."""
    return " ".join(folder_name.replace("_", " ").split())


def _readable(p: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
        return f"{type(e).__name__}: {e}".splitlines()[0][:120]
    return None


def scan(root, per_class: int | None = None, seed: int = 0, check: bool = True) -> Folder:
    """Classes of ``root``; ``per_class``: a seeded sample of at most that many readable images per class
    (``skipped["unreadable_images"]`` counts the unreadable ones met on the way)."""
    from indexer.sources import IMAGE_EXTS

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder (expected DIR/<class name>/*.jpg)")
    out = Folder(root, {}, {"loose_files": 0, "empty_classes": 0, "unreadable_images": 0, "non_images": 0})
    rng = np.random.default_rng(seed)
    for d in sorted(root.iterdir(), key=lambda p: p.name):
        if d.name.startswith("."):
            continue
        if not d.is_dir():
            out.skipped["loose_files"] += 1
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        imgs = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        out.skipped["non_images"] += len(files) - len(imgs)
        # a seeded sample: images in a seeded order, unreadable ones passed over, until per_class are found
        order = rng.permutation(len(imgs)).tolist() if per_class and len(imgs) > per_class else range(len(imgs))
        ok = []
        for i in order:
            if per_class and len(ok) == per_class:
                break
            why = _readable(imgs[i]) if check else None
            if why:
                out.skipped["unreadable_images"] += 1
                out.notes.append(f"skipping {imgs[i]}: {why}")
            else:
                ok.append(i)
        imgs = [imgs[i] for i in sorted(ok)]
        if not imgs:
            out.skipped["empty_classes"] += 1
            out.notes.append(f"skipping class {d.name!r}: no readable images")
            continue
        out.classes[d.name] = imgs
    if not out.classes:
        raise SourceError(f"{root}: no class subfolder with readable images (expected DIR/<class name>/*.jpg; "
                          f"skipped {', '.join(f'{v} {k}' for k, v in out.skipped.items() if v) or 'nothing'})")
    return out


def read_class_map(path, graph) -> dict[str, str]:
    """``class<TAB or comma>entity`` lines (``#`` comments); the entity is an id or a name (first sense)."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: no such class map")
    out: dict[str, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        sep = "\t" if "\t" in s else ","
        if sep not in s:
            raise SourceError(f"{p}:{n}: expected 'class<TAB>entity' or 'class,entity'")
        cls, ent = (x.strip() for x in s.split(sep, 1))
        if ent in graph:
            out[cls] = ent
            continue
        ids = graph.find(ent)
        if not ids:
            raise SourceError(f"{p}:{n}: {ent!r} is neither an entity id nor a name in the KG")
        out[cls] = ids[0]
    return out


def link_classes(names, graph, linker, class_map: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """(class name -> entity id, unlinked class names). A folder named by an entity id is that entity;
    otherwise the linker reads "a photo of a {class}" (the context picks object senses: "bag" the
    container, not the quantity; and "dress" links as a noun) and the link spanning the whole name is
    taken, else the last one (the head noun: "ankle boot" -> boot)."""
    class_map = class_map or {}
    linked, unlinked = {}, []
    for name in names:
        if name in class_map:
            linked[name] = class_map[name]
        elif name in graph:
            linked[name] = name
        else:
            text = class_text(name)
            links = linker.link(PROMPT.format(text))
            whole = [lk for lk in links if lk.span.lower() == text.lower()]
            if whole or links:
                linked[name] = (whole or links)[-1].entity_id
            else:
                unlinked.append(name)
    return linked, unlinked


def ancestors(graph, entity_id: str, max_up: int | None = None) -> dict[str, int]:
    """Ancestor id -> fewest hypernym steps up from ``entity_id`` (``max_up`` bounds the walk)."""
    seen: dict[int, int] = {}
    frontier, level = [graph.row(entity_id)], 0
    while frontier and (max_up is None or level < max_up):
        level += 1
        nxt = []
        for r in frontier:
            for rel in UP:
                for a in graph.neighbour_rows(r, rel).tolist():
                    if a not in seen:
                        seen[a] = level
                        nxt.append(a)
        frontier = nxt
    return {graph.ids[r]: d for r, d in seen.items()}


def hypernym_entities(graph, entities, levels: int = 3, min_classes: int = 2) -> list[str]:
    """KG ancestors 1-``levels`` steps above the class entities that cover at least ``min_classes``
    distinct class entities (within those steps), the class entities themselves excluded; in order
    of fewest steps, then entity id."""
    ents = sorted(set(entities))
    cover: dict[str, set[str]] = {}
    near: dict[str, int] = {}
    for e in ents:
        for a, d in ancestors(graph, e, levels).items():
            cover.setdefault(a, set()).add(e)
            near[a] = min(near.get(a, d), d)
    keep = [a for a, c in cover.items() if len(c) >= min_classes and a not in ents]
    return sorted(keep, key=lambda a: (near[a], a))


def category_set(folder: Folder, linked: dict[str, str], graph, levels: int = 3, min_classes: int = 2,
                 name: str | None = None):
    """The CategorySet of ``folder``'s linked classes (see the module docstring)."""
    from benchmarks.datasets import CategorySet

    classes = [c for c in folder.classes if c in linked]
    if not classes:
        raise SourceError(f"{folder.root}: none of its {len(folder.classes)} classes links to a KG entity "
                          "(give --class-map FILE)")
    items, labels = [], []
    for c in classes:
        items += folder.classes[c]
        labels += [c] * len(folder.classes[c])
    closure = {c: {linked[c], *ancestors(graph, linked[c])} for c in classes}
    queries, kinds, ents = [], [], []
    seen: set[str] = set()

    def add(text: str, kind: str, ent: str) -> None:
        if text.lower() not in seen:
            seen.add(text.lower())
            queries.append(text)
            kinds.append(kind)
            ents.append(ent)

    for c in classes:
        add(class_text(c), "class", linked[c])
    for c in classes:
        add(PROMPT.format(class_text(c)), "prompt", linked[c])
    for a in hypernym_entities(graph, [linked[c] for c in classes], levels, min_classes):
        add(graph.display_name(graph.row(a)), "hypernym", a)
    item_closure = [closure[c] for c in labels]
    rel = np.array([[e in cl for cl in item_closure] for e in ents], dtype=bool).reshape(len(ents), len(items))
    # a hypernym above every class ("artifact" over a set of garments and bags) makes every image relevant:
    # any ranking scores AP 1 on it, so it measures nothing
    keep = [q for q in range(len(queries)) if kinds[q] != "hypernym" or not rel[q].all()]
    queries, kinds, ents, rel = [queries[q] for q in keep], [kinds[q] for q in keep], [ents[q] for q in keep], rel[keep]
    digest = hashlib.sha1("\n".join(str(p.resolve()) for p in items).encode()).hexdigest()[:10]
    meta = {"root": str(folder.root), "classes": {c: linked[c] for c in classes},
            "query_entities": dict(zip(queries, ents)), "skipped": dict(folder.skipped)}
    return CategorySet(name or f"imagefolder-{folder.root.name}-{digest}", items, labels, queries, kinds, rel, meta)


def fashion_mnist_folder(per_class: int = 30):
    """Fashion-MNIST's seeded test sample (the category benchmark's renders) as an ImageFolder of links."""
    from benchmarks.datasets import bench_cache, fashion_mnist

    cs = fashion_mnist(per_class=per_class)
    root = bench_cache() / "fashion-mnist-imagefolder" / str(per_class)
    for item, label in zip(cs.items, cs.labels):
        name = label.split(" ", 1)[1] if label.split(" ", 1)[0] in ("a", "an") else label  # "a T-shirt"
        (root / name).mkdir(parents=True, exist_ok=True)
        link = root / name / item.name
        if not link.is_symlink():
            link.symlink_to(item.resolve())
    return root
