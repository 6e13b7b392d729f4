"""Benchmark datasets: captioned image sets and category/hypernym relevance sets.

Captioned sets load from a CSV/JSONL manifest, a COCO-style captions JSON or a
Flickr-style captions file (``image#n<TAB>caption``) into a
:class:`CaptionDataset` (image paths, captions, caption -> image index).
Datasets are read in place; nothing is copied into the repository. Derived
files (PNG renders of Fashion-MNIST, the emoji npm package) go to the bench
cache, ``$KGCLIP_BENCH_CACHE`` or ``~/.cache/kgclip-bench``.

Category sets (:class:`CategorySet`) pair items with label queries such as
"footwear" or "an animal" and a boolean relevance matrix, so KG expansion can
be scored with mAP / nDCG.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import SourceError
from retrieval.learn.captions import (  # noqa: F401 - re-exported: the benchmarks' caption readers
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    CaptionDataset,
    load_captions,
    load_coco,
    load_csv,
    load_flickr,
    load_jsonl,
    split_names,
    stable_hash,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FLICKR8K_1K = Path(os.environ.get("KGCLIP_FLICKR8K_1K", SHARED / "flickr8k-1k"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def bench_cache() -> Path:
    root = os.environ.get("KGCLIP_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kgclip-bench"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- captioned datasets: the readers live in retrieval.learn.captions (kgclip train shares them) ---------

def flickr8k_1k(split: str = "all", root: Path | None = None) -> CaptionDataset:
    """The 1000-image Flickr8k subset read in place; ``split`` is all|train|test (800/200 by SHA-1 rank)."""
    root = Path(root or FLICKR8K_1K)
    if not (root / "captions.csv").is_file():
        raise SourceError(f"{root}/captions.csv: flickr8k-1k not found (set KGCLIP_FLICKR8K_1K)")
    ds = load_csv(root / "captions.csv", root / "images")
    ds.name = "flickr8k-1k"
    return ds.split(split)



def tuxpaint_stamps(root) -> CaptionDataset:
    """Debian ``tuxpaint-stamps-default`` read in place (``dpkg-deb -x`` of the package into ``root``): each
    stamp's PNG with the first (English) line of the ``.txt`` beside it. Stamps without a PNG (SVG only)
    are left out and counted in ``meta["svg_only"]``. GPL-2: never copied into the repository."""
    root = Path(root)
    base = root / "usr" / "share" / "tuxpaint" / "stamps" if (root / "usr").is_dir() else root
    txts = sorted(base.rglob("*.txt"))
    if not txts:
        raise SourceError(f"{root}: no Tux Paint stamps (apt-get download tuxpaint-stamps-default && "
                          f"dpkg-deb -x tuxpaint-stamps-default_*.deb {root})")
    images, caps, svg_only = [], [], 0
    for t in txts:
        png = t.with_suffix(".png")
        line = t.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        if not png.is_file():
            svg_only += 1
            continue
        if line and line[0].strip():
            images.append(png)
            caps.append(line[0].strip())
    return CaptionDataset("tuxpaint-stamps", images, caps, np.arange(len(images)),
                          {"source": str(root), "svg_only": svg_only})

# -- category / hypernym relevance sets ---------------------------------------------------------


@dataclass
class CategorySet:
    """Items with label queries: ``relevant[q, i]`` says whether item i answers query q.

    ``kind[q]`` is ``class`` (the query names the item's own label) or ``hypernym``
    (the query names a broader concept: where knowledge-graph expansion should help).
    """

    name: str
    items: list[Path]
    labels: list[str]
    queries: list[str]
    kind: list[str]
    relevant: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def select(self, kind: str) -> "CategorySet":
        q = [i for i, k in enumerate(self.kind) if k == kind]
        return CategorySet(f"{self.name}-{kind}", self.items, self.labels, [self.queries[i] for i in q],
                           [kind] * len(q), self.relevant[q], dict(self.meta))


def _wordnet():
    from benchmarks.wordnet import load

    return load()


def _hyper_relevance(wn, item_synsets: list[set[str]], query_words: list[str]) -> np.ndarray:
    """relevant[q, i]: some synset of item i is a sense of query word q or one of its hyponyms."""
    closure = [set().union(*({s} | wn.ancestors(s) for s in syns)) if syns else set() for syns in item_synsets]
    rel = np.zeros((len(query_words), len(item_synsets)), dtype=bool)
    for q, w in enumerate(query_words):
        senses = set(wn.lemma_synsets(w))
        if not senses:
            raise SourceError(f"query word {w!r} is not a WordNet noun")
        for i, c in enumerate(closure):
            rel[q, i] = bool(senses & c)
    return rel


# Fashion-MNIST: label -> (query text, WordNet noun for the label)
FASHION_CLASSES = [
    ("a T-shirt", "t-shirt"), ("trousers", "trouser"), ("a pullover", "pullover"), ("a dress", "dress"),
    ("a coat", "coat"), ("a sandal", "sandal"), ("a shirt", "shirt"), ("a sneaker", "sneaker"),
    ("a bag", "bag"), ("an ankle boot", "boot"),
]
FASHION_HYPERNYMS = [("footwear", "footwear"), ("a shoe", "shoe"), ("clothing", "clothing"),
                     ("a garment", "garment"), ("a container", "container")]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(per_class: int = 100, seed: int = 0, root: Path = FASHION_MNIST, size: int = 112) -> CategorySet:
    """A seeded sample of the Fashion-MNIST test set rendered as PNGs in the bench cache.

    Class queries ("a sneaker") and hypernym queries ("footwear", "clothing"), relevance from
    the labels through WordNet (a label is relevant to a hypernym when its synset lies below it).
    """
    from PIL import Image

    images, labels = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file():
        raise SourceError(f"{images}: Fashion-MNIST not found (apt install dataset-fashion-mnist)")
    x, y = _read_idx(images), _read_idx(labels)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.choice(np.flatnonzero(y == c), per_class, replace=False)) for c in range(10)])
    out = bench_cache() / "fashion-mnist" / f"test-{size}"
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in pick:
        p = out / f"{i:05d}.png"
        if not p.is_file():
            # white background like a product photo; upscaled so the encoders see more than 28 px
            img = Image.fromarray(255 - x[i]).resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(p)
        items.append(p)
    item_labels = [FASHION_CLASSES[int(y[i])][0] for i in pick]
    wn = _wordnet()
    class_syn = [set(wn.lemma_synsets(w)[:1]) for _, w in FASHION_CLASSES]
    item_syn = [class_syn[int(y[i])] for i in pick]
    cls_rel = np.stack([y[pick] == c for c in range(10)])
    hyp_rel = _hyper_relevance(wn, item_syn, [w for _, w in FASHION_HYPERNYMS])
    return CategorySet(
        "fashion-mnist",
        items,
        item_labels,
        [q for q, _ in FASHION_CLASSES] + [q for q, _ in FASHION_HYPERNYMS],
        ["class"] * 10 + ["hypernym"] * len(FASHION_HYPERNYMS),
        np.concatenate([cls_rel, hyp_rel]),
        {"per_class": per_class, "seed": seed, "source": str(root)},
    )


# -- emoji (npm emoji-datasource-twitter) ----------------------------------------------------------

EMOJI_PACKAGE = "emoji-datasource-twitter"
# subcategory -> query text (a noun phrase naming the broader concept)
EMOJI_SUBCATEGORIES = {
    "animal-mammal": "a mammal", "animal-bird": "a bird", "animal-marine": "a sea animal",
    "animal-bug": "an insect", "animal-reptile": "a reptile", "animal-amphibian": "an amphibian",
    "plant-flower": "a flower", "plant-other": "a plant", "food-fruit": "a fruit",
    "food-vegetable": "a vegetable", "food-prepared": "prepared food", "food-asian": "Asian food",
    "food-sweet": "a dessert", "drink": "a drink", "dishware": "dishware", "transport-ground": "a land vehicle",
    "transport-water": "a boat", "transport-air": "an aircraft", "sky & weather": "the weather",
    "sport": "sports equipment", "musical-instrument": "a musical instrument", "clothing": "clothing",
    "household": "a household object", "tool": "a tool", "office": "office supplies", "money": "money",
    "light & video": "a light or a camera", "book-paper": "a book or paper", "mail": "mail",
    "science": "a science instrument", "medical": "a medical item", "game": "a game",
    "place-building": "a building", "place-geographic": "a landscape", "hotel": "a hotel",
    "time": "a clock", "music": "music", "phone": "a phone", "computer": "a computer", "sound": "a sound",
    "lock": "a lock", "writing": "a writing instrument", "event": "a celebration", "award-medal": "an award",
    "face-smiling": "a smiling face", "face-affection": "an affectionate face", "face-negative": "an angry face",
    "heart": "a heart", "flag": "a flag", "country-flag": "a national flag", "zodiac": "a zodiac sign",
    "arrow": "an arrow", "keycap": "a keycap", "geometric": "a geometric shape", "hand-fingers-open": "a hand",
    "person-sport": "a person doing sport", "person-activity": "a person doing something",
    "person-role": "a person at work", "family": "a family", "body-parts": "a body part",
}
EMOJI_CATEGORIES = {
    "Animals & Nature": "an animal or a plant", "Food & Drink": "food or drink",
    "Travel & Places": "a place or a vehicle", "Activities": "an activity", "Objects": "an object",
    "Smileys & Emotion": "a face or an emotion", "People & Body": "a person or a body part",
    "Symbols": "a symbol", "Flags": "a flag",
}


def emoji_package(install: bool = True) -> Path:
    """Folder of the npm package in the bench cache, installed with npm on first use."""
    prefix = bench_cache() / "npm"
    pkg = prefix / "node_modules" / EMOJI_PACKAGE
    if (pkg / "emoji.json").is_file():
        return pkg
    if not install:
        raise SourceError(f"{pkg}: {EMOJI_PACKAGE} is not installed (npm install --prefix {prefix} {EMOJI_PACKAGE})")
    npm = shutil.which("npm")
    if not npm:
        raise SourceError(f"the emoji benchmark needs npm to fetch {EMOJI_PACKAGE} (apt install npm), or install "
                          f"it yourself: npm install --prefix {prefix} {EMOJI_PACKAGE}")
    prefix.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), EMOJI_PACKAGE],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not (pkg / "emoji.json").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"npm install {EMOJI_PACKAGE} failed: {tail[0]}")
    return pkg


def emoji(size: int = 64, min_per_query: int = 5, install: bool = True) -> CategorySet:
    """Twitter emoji PNGs with category and subcategory queries (relevance from emoji.json labels)."""
    pkg = emoji_package(install)
    data = json.loads((pkg / "emoji.json").read_text(encoding="utf-8"))
    img_dir = pkg / "img" / "twitter" / str(size)
    items, labels, cats, subs = [], [], [], []
    for e in sorted(data, key=lambda e: e.get("sort_order", 0)):
        p = img_dir / e["image"]
        if not e.get("has_img_twitter", True) or not p.is_file() or e.get("category") == "Component":
            continue
        items.append(p)
        labels.append((e.get("name") or e.get("short_name") or "").lower())
        cats.append(e["category"])
        subs.append(e["subcategory"])
    if not items:
        raise SourceError(f"{img_dir}: no emoji images found")
    queries, kind, rel = [], [], []
    cats_a, subs_a = np.array(cats), np.array(subs)
    for sub, text in EMOJI_SUBCATEGORIES.items():
        r = subs_a == sub
        if r.sum() >= min_per_query:
            queries.append(text), kind.append("subcategory"), rel.append(r)
    for cat, text in EMOJI_CATEGORIES.items():
        r = cats_a == cat
        if r.sum() >= min_per_query:
            queries.append(text), kind.append("category"), rel.append(r)
    return CategorySet("emoji", items, labels, queries, kind, np.stack(rel),
                       {"package": str(pkg), "size": size})


# -- Flickr caption nouns -> WordNet hypernyms ------------------------------------------------------

FLICKR_HYPERNYMS = [
    ("an animal", "animal"), ("a dog", "dog"), ("a bird", "bird"), ("a vehicle", "vehicle"),
    ("a boat", "boat"), ("a body of water", "body_of_water"), ("a building", "building"),
    ("a musical instrument", "musical_instrument"), ("a ball", "ball"), ("headwear", "headdress"),
    ("footwear", "footwear"), ("sports equipment", "sports_equipment"), ("a plant", "vascular_plant"),
    ("food", "food"), ("clothing", "clothing"), ("a toy", "plaything"),
]
_STOP = set("a an the in on at of to is are and with for by from his her their its it as this that into "
            "out up down over while near two three four five one some other".split())
# nouns whose first WordNet sense is not what Flickr captions mean by them (colour, gender, rock climber)
_STOP |= {"orange", "female", "male", "climber", "climbers", "bat"}


def caption_nouns(caption: str, wn=None) -> set[str]:
    """First-sense noun synsets named in a caption (greedy longest WordNet match, bigrams first).

    Words more often used as verbs or adjectives (SemCor counts: "young", "male", "fly") are skipped,
    and so are two-word matches that start with one ("small white" the butterfly)."""
    wn = wn or _wordnet()
    toks = [t for t in re.findall(r"[a-z]+(?:-[a-z]+)*", caption.lower())]
    out, i = set(), 0
    while i < len(toks):
        if i + 1 < len(toks) and toks[i] not in _STOP and wn.mostly_noun(toks[i]):
            syn = wn.lemma_synsets(f"{toks[i]}_{toks[i + 1]}")
            if syn:
                out.add(syn[0])
                i += 2
                continue
        if toks[i] not in _STOP and wn.mostly_noun(toks[i]):
            syn = wn.lemma_synsets(toks[i])
            if syn:
                out.add(syn[0])
        i += 1
    return out


def flickr_hypernyms(ds: CaptionDataset | None = None, min_relevant: int = 10, max_share: float = 0.5) -> CategorySet:
    """Hypernym queries over flickr8k-1k: an image is relevant to "an animal" when one of its captions
    names a hyponym of animal (dog, horse, ...). Queries with fewer than ``min_relevant`` images or
    more than ``max_share`` of all images are dropped."""
    ds = ds or flickr8k_1k()
    wn = _wordnet()
    item_syn = [set() for _ in ds.images]
    for cap, i in zip(ds.captions, ds.caption_image):
        item_syn[int(i)] |= caption_nouns(cap, wn)
    rel = _hyper_relevance(wn, item_syn, [w for _, w in FLICKR_HYPERNYMS])
    keep = [q for q in range(len(FLICKR_HYPERNYMS))
            if min_relevant <= rel[q].sum() <= max_share * len(ds.images)]
    labels = [", ".join(sorted(wn.synsets[s].lemmas[0] for s in syn)) for syn in item_syn]
    return CategorySet(f"{ds.name}-hypernyms", list(ds.images), labels,
                       [FLICKR_HYPERNYMS[q][0] for q in keep], ["hypernym"] * len(keep), rel[keep],
                       {"counts": {FLICKR_HYPERNYMS[q][0]: int(rel[q].sum()) for q in range(len(FLICKR_HYPERNYMS))}})
