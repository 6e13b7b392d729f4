"""Scoring ideas for ``lite`` that are not (or not yet) ``LiteConfig`` settings, measured on top of the
default encoder with the same cached inputs as :mod:`benchmarks.lite_tuning` (which runs them and
records them in ``results/lite_tuning.json`` with ``"explored"`` set).

Each idea is labelled with what it needs that the encoder contract does not give:
``transductive`` (uses statistics of the 1000 test images or 5000 test captions),
``not foldable`` (a score that is not the cosine of one 384-d image vector and one query vector),
``diagnostic`` (fitted on flickr8k-1k train: NOT zero-shot, only to size the gap).
None of them beat the default by more than noise on text->image R@10 at the default's cost of one
224x224 forward per image; see the report rows. Round 3 also measures rows that spend more forwards
(higher input resolution, view pooling): only extra image views pay off, and those are the
``lite:tiles`` setting (a ``LiteConfig.views`` row in lite_tuning), not the default. Round 4: keeping
the aspect ratio at the same pixel count gains nothing (the gains of larger inputs come from
upsampling flickr8k-1k's 200x150 photos); two forwards at two scales reach R@10 0.301, but that pair
was the best of about 120 picked on these same images, and 2 forwards would put lite under its
70 img/s floor. Not measured here, tried by hand: ONNX Runtime int8 static quantization of Lite0
(QDQ, calibrated on scikit-image's photos and their crops) ran 1.5-1.75x faster but agreed with
the float top-1 class on only 52-64% of the images and lost 0.012-0.022 of R@10. Also by hand
(round 5): MiniLM queries mapped into ``lite:mpnet``'s space by a ridge map fitted on 10,000 WordNet
texts (glosses, names, "a photo of a {name}.") embedded by both models, to get mpnet's class table at
MiniLM's query cost: R@10 0.243 (mean cosine to the true mpnet query 0.61), below plain lite's 0.283.
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
        rgb = tf(load_image(p))[:, ::4, ::4] / 255.0  # the transform gives pixel bytes (uint8 CHW)
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
    rows += _round3(bench, cfg, table, logits, q, img, metrics)
    rows.append(_ridge_diagnostic(bench, logits, q, ci, table, cfg))
    return rows


# -- round 3 (2026-11-29): people, caption nouns, hypernym glosses, view pooling, resolution ----------------

PEOPLE = ["a man.", "a woman.", "a person.", "people.", "a boy.", "a girl.", "a child."]
PEOPLE_ROOTS = {"n03051540", "n00007846", "n03502509", "n03380867"}  # clothing, person, headdress, footwear


def _under(roots: set[str]) -> np.ndarray:
    """1 for the ImageNet classes that are (or descend from) one of ``roots`` in WordNet."""
    anc = imagenet_ancestors()
    return np.array([float(w in roots or any(a[0] in roots for a in anc.get(w, []))) for w, _n, _d in imagenet_classes()])


def caption_nouns(text: str, wn) -> list[str]:
    """Base forms of the words of a caption that WordNet tags mostly as nouns (no POS tagger offline)."""
    from retrieval.kg.linking import SKIP_WORDS, STOP_WORDS, tokenize

    out = []
    for tok, _s, _e in tokenize(text):
        if len(tok) < 3 or tok in STOP_WORDS or tok in SKIP_WORDS or not wn.mostly_noun(tok):
            continue
        out.append(wn.morphy(tok).replace("_", " "))
    return out


def _model_forward(bench, name: str, fn):
    """Eager Lite0 over every image, ``fn(model, PIL image) -> array``, stacked and cached per ``name``."""
    from benchmarks.datasets import bench_cache
    from benchmarks.lite_tuning import _cached
    from retrieval.encoders.base import load_image, weights_signature
    from retrieval.encoders.lite import lite0_weights_path, load_lite0

    def compute():
        import torch

        model = load_lite0("cpu", freeze=False)
        with torch.inference_mode():
            return np.stack([fn(model, load_image(p)) for p in bench.ds.images])

    fp = weights_signature([lite0_weights_path()])
    return _cached(bench_cache() / f"lite-explore-{bench._ds_key}-{fp}-{name}.npy", compute)


def _resized(img, w: int, h: int):
    import torch
    from PIL import Image

    from retrieval.encoders.lite import to_chw

    return torch.from_numpy(to_chw(img.resize((w, h), Image.BICUBIC))[None]).contiguous(
        memory_format=torch.channels_last)


def _round3(bench, cfg, table, logits, q, img, metrics):
    from benchmarks.wordnet import load as load_wordnet
    from retrieval.encoders import get_encoder
    from retrieval.encoders.lite import sharpen_table

    text = get_encoder("sbert:minilm", device="cpu", batch_size=128)
    rows = []
    people = l2_normalize(text.encode_texts(PEOPLE).mean(axis=0, keepdims=True))[0]
    worn = _under(PEOPLE_ROOTS)  # 57 classes: clothing, headdress, footwear, person
    rows.append(("people prior: class rows of clothing/person classes + 0.3 x 'a man./a woman./...' mean",
                 "zero-shot", metrics(q @ conse_mix(logits, l2_normalize(table + 0.3 * worn[:, None] * people),
                                                    cfg)[0].T)))
    mass = _probs(logits, 1.0) @ worn
    rows.append(("people prior: image + 0.4 x (clothing/person probability mass) x people direction",
                 "zero-shot", metrics(q @ l2_normalize(img + 0.4 * mass[:, None] * people).T)))

    wn = load_wordnet()
    nouns = [caption_nouns(c, wn) for c in bench.ds.captions]
    vocab = sorted({n for ns in nouns for n in ns})
    nv = dict(zip(vocab, text.encode_texts([f"a photo of a {n}." for n in vocab])))
    mean_n = l2_normalize(np.array([np.mean([nv[n] for n in ns], axis=0) if ns else np.zeros(q.shape[1])
                                    for ns in nouns]) + 1e-9)
    for a in (0.3, 1.0):
        rows.append((f"query + {a} x mean of 'a photo of a {{noun}}.' over the caption's WordNet nouns",
                     "zero-shot", metrics(l2_normalize(q + a * mean_n) @ img.T)))
    joined = text.encode_texts([", ".join(ns) if ns else c for ns, c in zip(nouns, bench.ds.captions)])
    rows.append(("query + 0.3 x embedding of the caption's noun list 'dog, grass'", "zero-shot",
                 metrics(l2_normalize(q + 0.3 * joined) @ img.T)))

    anc = imagenet_ancestors()
    ids = sorted({a[0] for w, _n, _d in imagenet_classes() for a in anc.get(w, [])})
    ae = dict(zip(ids, text.encode_texts([f"{', '.join(wn.synsets[i].lemmas)}: {wn.synsets[i].gloss.split(';')[0]}"
                                          for i in ids])))

    def with_glosses(rows_, decay, min_depth):
        return l2_normalize(np.array([r + sum(decay ** up * ae[sid] for sid, _l, up, depth, _f in anc.get(w, [])
                                              if up <= 4 and depth >= min_depth)
                                      for (w, _n, _d), r in zip(imagenet_classes(), rows_.astype(np.float64))]))

    raw = l2_normalize(bench.prompt_embeddings(cfg).mean(axis=1))
    t_before = sharpen_table(with_glosses(raw, 0.25, 6), cfg.sharpen, cfg.sharpen_k)
    rows.append(("WordNet graph: class row + 0.25^steps x hypernym glosses (up to 4 up, depth >= 6), then sharpen",
                 "zero-shot", metrics(q @ conse_mix(logits, t_before, cfg)[0].T)))
    rows.append(("WordNet graph: sharpened class row + 0.15^steps x hypernym glosses (up to 4 up, depth >= 5)",
                 "zero-shot", metrics(q @ conse_mix(logits, with_glosses(table, 0.15, 5), cfg)[0].T)))

    views = np.stack([logits] + [bench.logits(cfg.resize, v) for v in ("start", "middle", "end")], axis=1)
    pv = _probs(views.reshape(-1, 1000), cfg.temperature).reshape(views.shape)
    rows.append(("whole + 3 squares pooled as mean class probabilities (4 forwards)", "zero-shot",
                 metrics(q @ _vectors(_topk(pv.mean(axis=1), cfg.top_k), table, cfg).T)))
    rows.append(("whole + 3 squares pooled as max class probabilities (4 forwards)", "zero-shot",
                 metrics(q @ _vectors(_topk(pv.max(axis=1), cfg.top_k), table, cfg).T)))

    feats = _model_forward(bench, "features7", lambda m, im: m.forward_features(
        _resized(im, 224, 224))[0].numpy().astype(np.float16)).astype(np.float32)
    cnn = load_lite0_classifier()

    def win(r0, r1, c0, c1):
        return feats[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) @ cnn[0].T + cnn[1]
    for label, wins in [("left/right/top/bottom halves", [(0, 7, 0, 4), (0, 7, 3, 7), (0, 4, 0, 7), (3, 7, 0, 7)]),
                        ("3x3 grid of 3x3 windows", [(r, r + 3, c, c + 3) for r in (0, 2, 4) for c in (0, 2, 4)])]:
        vs = np.stack([conse_mix(win(*w), table, cfg)[0] for w in wins], axis=1)
        rows.append((f"one forward, classifier on 7x7 feature-map windows ({label}): whole + 0.5 x mean of windows",
                     "zero-shot", metrics(q @ l2_normalize(img + 0.5 * vs.mean(axis=1)).T)))
    scaled = {}
    for name, (w, h) in [("squash 256x256 (1.31x pixels)", (256, 256)), ("squash 288x288 (1.65x pixels)", (288, 288)),
                         ("aspect-kept 288x224 (1.29x pixels)", (288, 224)),
                         ("aspect-kept 256x192 (0.98x pixels)", (256, 192)),
                         ("aspect-kept 240x180 (0.86x pixels)", (240, 180)),
                         ("aspect-kept 272x204 (1.11x pixels)", (272, 204))]:
        key = name.split(" (")[0].replace(" ", "-")
        lg = _model_forward(bench, key, lambda m, im, w=w, h=h: m(_resized(
            im, *((w, h) if im.size[0] >= im.size[1] else (h, w))))[0].numpy())
        scaled[key] = conse_mix(lg, table, cfg)[0]
        rows.append((f"one forward at {name}", "zero-shot", metrics(q @ scaled[key].T)))
    # Two scales, their ConSE vectors averaged. These pairs are the best of all pairs of the views and
    # scales above on these same 1000 images: an optimistic reading, chosen on the test set.
    for a, b, label in [("whole", "aspect-kept-272x204", "squash 224 + aspect-kept 272x204 (2.1x pixels)"),
                        ("aspect-kept-240x180", "squash-288x288", "aspect-kept 240x180 + squash 288x288 (2.5x pixels)")]:
        va = img if a == "whole" else scaled[a]
        rows.append((f"two forwards at two scales, {label}; best pair of ~120 on these images (optimistic)",
                     "zero-shot", metrics(q @ l2_normalize(va + scaled[b]).T)))
    return rows


def load_lite0_classifier() -> tuple[np.ndarray, np.ndarray]:
    """(weight [1000, 1280], bias [1000]) of Lite0's last layer."""
    from retrieval.encoders.lite import load_lite0

    m = load_lite0("cpu", freeze=False)
    return m.classifier.weight.detach().numpy(), m.classifier.bias.detach().numpy()


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
