"""Scoring ideas for ``lite`` that are not (or not yet) ``LiteConfig`` settings, measured on top of the
default encoder with the same cached inputs as :mod:`benchmarks.lite_tuning` (which runs them and
records them in ``results/lite_tuning.json`` with ``"explored"`` set).

Each idea is labelled with what it needs that the encoder contract does not give:
``transductive`` (uses statistics of the 1000 test images or 5000 test captions),
``not foldable`` (a score that is not the cosine of one 384-d image vector and one query vector),
``diagnostic`` (fitted on flickr8k-1k train: NOT zero-shot, only to size the gap).
None of them beat the default by more than noise on text->image R@10; see the report rows.
"""

from __future__ import annotations

import numpy as np

from benchmarks.metrics import caption_retrieval_metrics
from retrieval.encoders.base import l2_normalize
from retrieval.encoders.lite import LiteConfig, conse_mix, imagenet_ancestors, imagenet_classes

DOGS = slice(151, 269)  # the 118 ImageNet dog classes


def _probs(logits: np.ndarray, t: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / t
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _topk(p: np.ndarray, k: int) -> np.ndarray:
    idx = np.argpartition(-p, k - 1, axis=1)[:, :k]
    w = np.zeros_like(p)
    np.put_along_axis(w, idx, np.take_along_axis(p, idx, axis=1), axis=1)
    return w / w.sum(axis=1, keepdims=True)


def _vectors(w: np.ndarray, table: np.ndarray, cfg: LiteConfig) -> np.ndarray:
    """Image vectors from mixing weights, with the encoder's centring."""
    v = l2_normalize(w @ table)
    return l2_normalize(v - cfg.center * table.mean(axis=0)) if cfg.center else v


def _std(s: np.ndarray) -> np.ndarray:
    return s / s.std(axis=1, keepdims=True)


def _ancestor_groups(min_freq: int = 1, min_depth: int = 5) -> np.ndarray:
    """Group id per class: its nearest everyday WordNet ancestor (the class itself where none)."""
    anc, g = imagenet_ancestors(), []
    for wnid, _names, _d in imagenet_classes():
        gid = wnid
        for sid, _lemmas, _up, depth, freq in anc.get(wnid, []):
            if freq >= min_freq and depth >= min_depth:
                gid = sid
                break
        g.append(gid)
    ids = {x: i for i, x in enumerate(sorted(set(g)))}
    return np.array([ids[x] for x in g])


def _colour_hist(bench) -> np.ndarray:
    """Centre-weighted share of 11 named colours per image (simple HSV rules on the squash input)."""
    from retrieval.encoders.base import load_image
    from retrieval.encoders.lite import ImagePreprocess

    tf, out = ImagePreprocess(mode="squash"), []
    yy, xx = np.mgrid[0:56, 0:56]
    wc = np.exp(-(((yy - 28) / 18.7) ** 2 + ((xx - 28) / 18.7) ** 2) / 2)
    for p in bench.ds.images:
        rgb = np.clip((tf(load_image(p))[:, ::4, ::4] * 128 + 127) / 255, 0, 1)
        r, g, b = rgb
        mx, mn = rgb.max(0), rgb.min(0)
        d = np.maximum(mx - mn, 1e-6)
        s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
        h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
        lab = np.full(h.shape, -1)
        lab[mx < 0.2] = 0  # black
        lab[(lab < 0) & (s < 0.25) & (mx > 0.75)] = 1  # white
        lab[(lab < 0) & (s < 0.25)] = 2  # gray
        lab[(lab < 0) & (h >= 10) & (h < 45) & (mx < 0.65)] = 3  # brown
        for i, upper in ((4, 10), (5, 40), (6, 70), (7, 165), (8, 260), (9, 295)):  # red .. purple
            lab[(lab < 0) & (h < upper)] = i
        lab[lab < 0] = 10  # pink / red wrap-around
        hist = np.array([((lab == i) * wc).sum() for i in range(11)])
        out.append(hist / hist.sum())
    return np.array(out)


COLOURS = ["black", "white", "gray", "brown", "red", "orange", "yellow", "green", "blue", "purple", "pink"]


def explored(bench, cfg: LiteConfig | None = None) -> list[tuple[str, str, dict]]:
    """(name, label, metrics) for each idea, measured against ``cfg`` (default: ``LiteConfig()``)."""
    from retrieval.encoders import get_encoder

    cfg = cfg or LiteConfig()
    table = bench.table(cfg)
    logits = bench.logits(cfg.resize)
    q = bench.captions()
    ci = bench.ds.caption_image
    text = get_encoder("sbert:minilm", device="cpu", batch_size=128)

    def metrics(scores):
        return caption_retrieval_metrics(scores, ci)

    p = _probs(logits, cfg.temperature)
    w = _topk(p, cfg.top_k)
    img = _vectors(w, table, cfg)
    lin = q @ img.T
    rows = [("reference: the default, recomputed here", "zero-shot", metrics(lin))]

    prior = _probs(logits, 1.0).mean(axis=0)
    for a in (0.25, 0.5):
        wa = _topk(_probs(logits - a * np.log(prior), cfg.temperature), cfg.top_k)
        rows.append((f"ImageNet-class prior correction: logits - {a} x log(mean p over the 1000 images)",
                     "transductive", metrics(q @ _vectors(wa, table, cfg).T)))
    for a in (0.1, 0.3):
        scene = l2_normalize(table.mean(axis=0))[0]
        rows.append((f"constant scene vector: image + {a} x class-table mean direction", "zero-shot",
                     metrics(q @ l2_normalize(img + a * scene).T)))
    raw = w @ table
    for a in (0.5, 1.5):
        rows.append((f"partial normalisation: q.m / |m|^{a} (m = unnormalised mix)", "not foldable",
                     metrics((q @ raw.T) / np.linalg.norm(raw, axis=1)[None] ** a)))
    sim = q @ table.T
    for tau in (0.05, 0.1):
        e = np.exp((sim - sim.max(axis=1, keepdims=True)) / tau)
        prob = (e / e.sum(axis=1, keepdims=True)) @ w.T
        rows.append((f"class-probability-space score: softmax(q.T/{tau}) . w", "not foldable", metrics(prob)))
        rows.append((f"... fused 0.3 with the cosine (std-scaled), tau {tau}", "not foldable",
                     metrics(_std(lin) + 0.3 * _std(prob))))
    banks = ((table, "class table", "not foldable"), (q, "captions", "transductive, not foldable"))
    for bank, name, label in banks:
        r = np.sort(img @ bank.T, axis=1)[:, -10:].mean(axis=1)
        rows.append((f"CSLS-style image penalty: cos - 0.5 x mean top-10 cos to the {name}", label,
                     metrics(lin - 0.5 * r[None])))
    for name, u, label in (("image mean", img.mean(axis=0), "transductive"),
                           ("caption mean", q.mean(axis=0), "transductive")):
        u = u / np.linalg.norm(u) * np.linalg.norm(img.mean(axis=0))
        rows.append((f"centre images on the {name} (0.25)", label,
                     metrics(q @ l2_normalize(img - 0.25 * u).T)))
    c = table - table.mean(axis=0)
    ev, vecs = np.linalg.eigh(c.T @ c / len(c))
    wh = (vecs * (ev / ev.max() + 0.1) ** -0.125) @ vecs.T
    rows.append(("partial whitening of queries and images by the class-table covariance (alpha 0.25)",
                 "zero-shot", metrics(l2_normalize(q @ wh) @ l2_normalize(img @ wh).T)))
    groups = _ancestor_groups()
    gm = np.zeros((1000, groups.max() + 1))
    gm[np.arange(1000), groups] = 1
    for gamma in (0.5, 0.7):
        mass = (p @ gm)[:, groups]
        wa = _topk(p * (mass + 1e-12) ** (gamma - 1), cfg.top_k)
        rows.append((f"damp big WordNet groups: a group's total weight -> mass^{gamma}", "zero-shot",
                     metrics(q @ _vectors(wa, table, cfg).T)))
    u = l2_normalize(table[DOGS].mean(axis=0))[0]
    rows.append(("shrink image vectors along the dog-breed direction (0.4)", "zero-shot",
                 metrics(q @ l2_normalize(img - 0.4 * (img @ u)[:, None] * u[None]).T)))
    top = -np.sort(-np.asarray(logits, dtype=np.float64), axis=1)[:, : cfg.top_k]
    temps = np.array([1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10.0])
    perp = []
    for t in temps:
        pt = _probs(top, t)
        perp.append(np.exp(-(pt * np.log(pt + 1e-12)).sum(axis=1)))
    ti = temps[np.argmin(np.abs(np.stack(perp, axis=1) - 12), axis=1)]
    wa = _topk(_probs(logits / ti[:, None], 1.0), cfg.top_k)
    rows.append(("per-image temperature (perplexity of the top-k mix ~ 12)", "zero-shot",
                 metrics(q @ _vectors(wa, table, cfg).T)))
    anc = imagenet_ancestors()
    kinds = []
    for wnid, names, _d in imagenet_classes():
        seen = {n.lower() for n in names}
        kinds.append(next((lem[0] for _s, lem, _u, depth, freq in anc.get(wnid, [])
                           if freq >= 1 and depth >= 5 and lem[0].lower() not in seen), None))
    names = sorted({k for k in kinds if k})
    kv = dict(zip(names, text.encode_texts([f"a photo of a {k}." for k in names])))
    hyper = np.array([kv[k] if k else np.zeros(table.shape[1], np.float32) for k in kinds])
    rows.append(("smooth classes toward their everyday hypernym: row + 0.25 x 'a photo of a {kind}.'",
                 "zero-shot", metrics(q @ conse_mix(logits, l2_normalize(table + 0.25 * hyper), cfg)[0].T)))
    ctab = text.encode_texts(COLOURS)
    hist = _colour_hist(bench)
    rows.append(("image + 0.2 x colour-name embeddings weighted by a centre colour histogram (numpy)",
                 "zero-shot", metrics(q @ l2_normalize(img + 0.2 * hist @ ctab).T)))
    for m in (10,):
        s = img @ table.T
        nb = np.argpartition(-s, m - 1, axis=1)[:, :m]
        rows.append((f"sharpen the mixed image vector: minus 0.2 x mean of its {m} nearest classes",
                     "zero-shot", metrics(q @ l2_normalize(img - 0.2 * table[nb].mean(axis=1)).T)))
    rows.append(_ridge_diagnostic(bench, logits, q, ci, table, cfg))
    return rows


def _ridge_diagnostic(bench, logits, q, ci, table, cfg):
    """DIAGNOSTIC (not zero-shot): a ridge map from centred log-probabilities to the mean caption
    embedding, fitted on the 800 train images, scored on the 200 test images next to the default."""
    from benchmarks.datasets import split_names

    parts = split_names([p.name for p in bench.ds.images])
    tr = np.array([parts[p.name] == "train" for p in bench.ds.images])
    te_idx = np.where(~tr)[0]
    remap = -np.ones(len(tr), dtype=int)
    remap[te_idx] = np.arange(len(te_idx))
    keep = ~tr[ci]
    x = np.log(_probs(logits, 3.0) + 1e-6)
    x -= x.mean(axis=1, keepdims=True)
    target = np.zeros((len(tr), q.shape[1]))
    np.add.at(target, ci, q)
    target = l2_normalize(target)
    a = np.linalg.solve(x[tr].T @ x[tr] + 100.0 * np.eye(x.shape[1]), x[tr].T @ target[tr])
    m = caption_retrieval_metrics(q[keep] @ l2_normalize(x[te_idx] @ a).T, remap[ci[keep]])
    ref = caption_retrieval_metrics(q[keep] @ conse_mix(logits[te_idx], table, cfg)[0].T, remap[ci[keep]])
    m["test_split_default_image_retrieval_recall@10"] = ref["image_retrieval_recall@10"]
    return ("DIAGNOSTIC ridge map logits -> caption space, fitted on the 800 train images; metrics on the "
            "200 test images (default on the same 200: test_split_default_image_retrieval_recall@10)",
            "diagnostic: trained on flickr8k train, NOT zero-shot", m)
