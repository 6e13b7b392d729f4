"""ConSE, the bridge between lite's two towers, in pure numpy.

The class-text table (each ImageNet class described through its WordNet synset and embedded by the text
tower, then sharpened), the image-side mix of the most likely classes' rows (:func:`conse_mix`,
:func:`conse_views`), the query-side counterpart (:func:`project_queries`), and the per-image top
classes and soft concept profiles the knowledge graph grounds on (:func:`top_classes`,
:func:`concept_profiles`). Pure numpy so the benchmarks score exactly what the encoder computes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..base import l2_normalize
from .config import LiteConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def imagenet_classes() -> list[tuple[str, list[str], str]]:
    """(WordNet synset id such as ``n02123045``, lemma names, definition) for the 1000 classes."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    for i in range(1000):
        wnid = info.index_to_label_name(i)
        names = [n.strip() for n in info.index_to_description(i).split(",") if n.strip()]
        detailed = info.index_to_description(i, detailed=True)
        definition = detailed.split(":", 1)[1].strip() if ":" in detailed else ""
        out.append((wnid, names, definition))
    return out


@lru_cache(maxsize=1)
def imagenet_ids() -> tuple[str, ...]:
    """The 1000 classes' WordNet ids, sorted: ImageNet's class order (the class table's rows and the
    concept profiles' class indexes), read from the shipped data file instead of timm."""
    return tuple(sorted(imagenet_ancestors()))


def imagenet_ancestors() -> dict[str, list]:
    """Per class: WordNet ancestors ``[id, lemmas, steps up, depth below root, SemCor frequency]``,
    nearest first (shipped data file made by ``python -m benchmarks.wordnet imagenet-json``)."""
    path = DATA_DIR / "imagenet_wordnet.json"
    return json.loads(path.read_text(encoding="utf-8"))["classes"]


def class_kinds(config: LiteConfig) -> list[list[str]]:
    """Everyday hypernym names per class (see :class:`LiteConfig`)."""
    anc = imagenet_ancestors()
    out = []
    for wnid, names, _d in imagenet_classes():
        seen = {n.lower() for n in names}
        kinds = []
        for _sid, lemmas, _up, depth, freq in anc.get(wnid, []):
            if len(kinds) >= config.kinds:
                break
            if freq >= config.kind_min_freq and depth >= config.kind_min_depth and lemmas[0].lower() not in seen:
                kinds.append(lemmas[0])
                seen.add(lemmas[0].lower())
        out.append(kinds)
    return out


def class_prompts(config: LiteConfig) -> list[list[str]]:
    """Prompt texts per class (one list per class, one text per template)."""
    texts = []
    kinds = class_kinds(config) if config.kinds else [[] for _ in range(1000)]
    for (_wnid, names, definition), kind in zip(imagenet_classes(), kinds):
        fill = dict(name=names[0], names=", ".join(names), definition=definition,
                    kinds=", ".join(kind) if kind else names[0],
                    a_kind_of=f", a kind of {', '.join(kind)}" if kind else "")
        texts.append([" ".join(t.format(**fill).split()) for t in config.prompts])
    return texts


def sharpen_table(table: np.ndarray, share: float, k: int) -> np.ndarray:
    """Local contrast on the class-text table: each row minus ``share`` x the mean of its ``k``
    most similar other rows, re-normalised (see :class:`LiteConfig`)."""
    t = np.asarray(table, dtype=np.float64)
    if not share or k < 1:
        return l2_normalize(t).astype(np.float32)
    sim = t @ t.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(t) - 1)
    nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return l2_normalize(t - share * t[nb].mean(axis=1)).astype(np.float32)


def build_class_table(embeddings: np.ndarray, config: LiteConfig) -> np.ndarray:
    """The class-text table from the prompt embeddings ``[1000, n_prompts, d]``: templates averaged,
    normalised, sharpened. Shared by the encoder and the tuning benchmark."""
    return sharpen_table(l2_normalize(np.asarray(embeddings).mean(axis=1)), config.sharpen, config.sharpen_k)


def conse_mix(logits: np.ndarray, table: np.ndarray, config: LiteConfig):
    """ConSE: softmax(logits / T), keep the top-k classes, renormalise, mix their table rows.

    Returns (L2-normalised vectors [n, d], top probabilities [n, k], top class indices [n, k]).
    Pure numpy so the tuning benchmark scores exactly what the encoder computes.
    """
    z = np.asarray(logits, dtype=np.float64) / config.temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = min(config.top_k, p.shape[1])
    idx = np.argpartition(-p, k - 1, axis=1)[:, :k] if k < p.shape[1] else np.tile(np.arange(k), (len(p), 1))
    top = np.take_along_axis(p, idx, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)
    w = top / top.sum(axis=1, keepdims=True)
    vec = np.einsum("nk,nkd->nd", w, table[idx].astype(np.float64))
    if config.center:
        vec = l2_normalize(vec) - config.center * table.mean(axis=0)
    return l2_normalize(vec), top.astype(np.float32), idx


def conse_views(logits: np.ndarray, table: np.ndarray, config: LiteConfig) -> np.ndarray:
    """Image vectors from the logits of ``len(config.views)`` views per image (rows image-major,
    ``[n * views, 1000]``): the mean of the views' :func:`conse_mix` vectors, re-normalised."""
    v = len(config.views)
    vec = conse_mix(logits, table, config)[0]
    if v == 1:
        return vec
    return l2_normalize(vec.reshape(-1, v, vec.shape[1]).mean(axis=1)).astype(np.float32)


def project_queries(q: np.ndarray, table: np.ndarray, config: LiteConfig) -> np.ndarray:
    """Query-side counterparts of the image side: class-description mixing and centring."""
    q = np.asarray(q, dtype=np.float32)
    if config.text_mix and len(q):
        sim = q @ table.T
        k = min(config.text_top_k, table.shape[0])
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sim, idx, axis=1) / config.text_temperature
        w = np.exp(s - s.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        mixed = l2_normalize(np.einsum("nk,nkd->nd", w, table[idx]))
        q = l2_normalize((1 - config.text_mix) * q + config.text_mix * mixed)
    if config.text_center:
        q = l2_normalize(q - config.text_center * table.mean(axis=0))
    return q



# top classes and temperature of new indexes' concept profiles (tuning subsets of the category sets,
# emoji mAP vs no expansion: 30 classes +17.8%, 50 +19.2%, 100 +23.3%; temperature 2 beat 3)
PROFILE = (100, 2.0)


def profile_record() -> dict:
    """What an index built now records about its concept profiles (its model info's ``profile``)."""
    return {"top": PROFILE[0], "temperature": PROFILE[1], "classes": "imagenet-1k"}


def concept_profiles(logits: np.ndarray, top: int, temperature: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (class indexes uint16, probabilities float16) of its ``top`` classes at ``temperature``.

    The grounding signal for category queries: at temperature 2 the top 100 classes hold about a third
    of the probability (flickr8k-1k), and a class 80 places down still says "something of this kind may
    be here", which a drawing or an out-of-ImageNet photo needs (benchmarks/results/kg_tuning.json: emoji
    category mAP +24% with these against +11% with the top 5 at temperature 1).
    """
    idx, p = top_classes(logits, top, temperature)
    return [(irow.astype(np.uint16), prow[irow].astype(np.float16)) for prow, irow in zip(p, idx)]


def top_classes(logits: np.ndarray, top: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(each row's ``top`` class indexes, most likely first, ties by index; softmax(logits / temperature))."""
    z = logits - logits.max(axis=1, keepdims=True)
    if temperature != 1.0:
        z = z / float(temperature)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.argsort(-p, axis=1, kind="stable")[:, : min(int(top), p.shape[1])], p


