"""A plain-torch BERT/MPNet sentence encoder for sentence-transformers folders of the simplest shape.

``sentence_transformers`` pulls in transformers, scikit-learn and pandas: about 9 s of imports on
a 2-core machine before the first query. A folder whose pipeline is exactly
Transformer(BERT or MPNet) -> mean pooling -> Normalize (all-MiniLM-L6-v2, the shipped text tower;
all-mpnet-base-v2, the larger one) is run here with torch, ``tokenizers`` and ``safetensors`` alone.
:func:`supports` decides; anything else goes through sentence-transformers. Equality with
sentence-transformers is checked in the tests.

MPNet differs from BERT in three places: no token-type embeddings, positions counted from the pad id
plus one (RoBERTa style), and a learned relative-position bias (T5-style log buckets, shared by all
layers) added to every attention score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import onnx
from .base import weights_signature


def supports(folder: str | Path) -> bool:
    """True when ``folder`` is a BERT + mean pooling (+ Normalize) sentence-transformers model."""
    d = Path(folder)
    try:
        modules = json.loads((d / "modules.json").read_text())
        config = json.loads((d / "config.json").read_text())
        pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    only_mean = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                 "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                                 "pooling_mode_lasttoken")
    )
    return (
        types in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"])
        and config.get("model_type") in ("bert", "mpnet")
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") == "gelu"
        and bool(only_mean)
        and (d / "model.safetensors").is_file()
        and (d / "tokenizer.json").is_file()
    )


class MiniBert:
    """BERT or MPNet encoder + mean pooling; ``encode(texts)`` returns L2-normalised float32 numpy.

    On CPU it runs through ONNX Runtime (exported once into the cache, see :mod:`.onnx`), so a
    query needs neither torch nor its import time; elsewhere, or as a fallback, plain torch.
    """

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from tokenizers import Tokenizer

        d = Path(folder)
        cfg = json.loads((d / "config.json").read_text())
        st_cfg = {}
        if (d / "sentence_bert_config.json").is_file():
            st_cfg = json.loads((d / "sentence_bert_config.json").read_text())
        self.max_len = int(st_cfg.get("max_seq_length", 256))
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(self.max_len)
        self.tok.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)))
        self.kind = cfg.get("model_type", "bert")
        self.pad = 1  # MPNet positions count from here (transformers' MPNetEmbeddings fixes padding_idx = 1)
        self.buckets = int(cfg.get("relative_attention_num_buckets", 32))
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.device = device
        self.dim = int(cfg["hidden_size"])
        self.folder = d
        self.w = None
        self.ort = None
        if onnx.wanted(device):
            sig = weights_signature([d / "model.safetensors", d / "config.json"])
            self.ort = onnx.load_or_export("minibert", sig, self._export, self._check, tolerance=1e-4)
        if self.ort is None:
            self._load_torch()

    def _load_torch(self) -> None:
        import torch
        from safetensors.torch import load_file

        w = load_file(str(self.folder / "model.safetensors"), device="cpu")
        self.w = {k: v.to(device=self.device, dtype=torch.float32) for k, v in w.items()}

    def _inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch(texts)
        return {"ids": np.array([e.ids for e in enc], np.int64),
                "mask": np.array([e.attention_mask for e in enc], np.int64),
                "types": np.array([e.type_ids for e in enc], np.int64)}

    def _export(self, path: str) -> None:
        import torch

        self._load_torch()
        bert = self

        class Forward(torch.nn.Module):
            def forward(self, ids, mask, types):
                return bert.forward(ids, mask, types)

        x = {k: torch.from_numpy(v) for k, v in self._inputs(["a photo of a dog", "x"]).items()}
        dyn = {k: {0: "batch", 1: "tokens"} for k in x}
        onnx.export_module(Forward(), (x["ids"], x["mask"], x["types"]), path, list(x), dyn)

    def _check(self, model) -> float:
        """Largest difference between the exported graph and torch on probe sentences of mixed lengths."""
        import torch

        x = self._inputs(["a dog catching a frisbee in the park on a sunny day", "x", "two red cars"])
        with torch.inference_mode():
            ref = self.forward(*(torch.from_numpy(x[k]) for k in ("ids", "mask", "types"))).numpy()
        diff = float(np.abs(model.run(**x) - ref).max())
        self.w = None  # the session holds the weights now
        return diff

    def half(self) -> "MiniBert":
        if self.w is None:
            return self
        self.w = {k: (v.half() if v.is_floating_point() else v) for k, v in self.w.items()}
        return self

    def _ln(self, x, prefix):
        import torch.nn.functional as F

        return F.layer_norm(x, (self.dim,), self.w[prefix + ".weight"], self.w[prefix + ".bias"], self.eps)

    def _lin(self, x, prefix):
        import torch.nn.functional as F

        return F.linear(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"])

    def _embed(self, ids, types):
        import torch

        w = self.w
        if self.kind == "mpnet":  # positions count from the padding index + 1; pads sit at it
            real = (ids != self.pad).long()
            pos = torch.cumsum(real, 1) * real + self.pad
            x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)
            x = (w["embeddings.word_embeddings.weight"][ids]
                 + w["embeddings.position_embeddings.weight"][pos][None])
            x = x + w["embeddings.token_type_embeddings.weight"][types]
        return self._ln(x, "embeddings.LayerNorm")

    def _position_bias(self, n: int, device):
        """MPNet's relative-position attention bias ``[1, heads, n, n]`` (transformers'
        ``MPNetEncoder.compute_position_bias``: 32 buckets, half per direction, exact below 8,
        logarithmic up to a distance of 128)."""
        import torch

        r = torch.arange(n, device=device)
        dist = r[:, None] - r[None, :]  # query position - key position
        half = self.buckets // 2
        exact = half // 2
        bucket = (dist < 0).long() * half
        dist = dist.abs()
        log = torch.log(dist.clamp(min=1).float() / exact) / math.log(128 / exact) * (half - exact)
        large = torch.clamp(exact + log.long(), max=half - 1)
        bucket = bucket + torch.where(dist < exact, dist, large)
        return self.w["encoder.relative_attention_bias.weight"][bucket].permute(2, 0, 1)[None]

    def forward(self, ids, mask, types):
        import torch
        import torch.nn.functional as F

        x = self._embed(ids, types)
        b, n = x.shape[0], x.shape[1]
        h = self.dim  # a Python int (not a traced shape), so the graph exports with dynamic b and n
        hd = h // self.heads
        attn_mask = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        if self.kind == "mpnet":
            names = ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                     "attention.LayerNorm")
            attn_mask = attn_mask + self._position_bias(n, ids.device).to(x.dtype)
        else:
            names = ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "attention.output.LayerNorm")
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (self._lin(x, p + t).view(b, n, self.heads, hd).transpose(1, 2) for t in names[:3])
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0 / math.sqrt(hd))
            a = a.transpose(1, 2).reshape(b, n, h)
            x = self._ln(self._lin(a, p + names[3]) + x, p + names[4])
            y = F.gelu(self._lin(x, p + "intermediate.dense"))
            x = self._ln(self._lin(y, p + "output.dense") + x, p + "output.LayerNorm")
        m = mask[..., None].to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        # longest first, as sentence-transformers does, so each batch pads little
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            x = self._inputs([texts[i] for i in idx])
            if self.ort is not None:
                v = self.ort.run(**x)
            else:
                v = self._torch_forward(x)
            n = np.linalg.norm(v, axis=1, keepdims=True)
            out[idx] = v / np.maximum(n, 1e-12)
        return out

    def _torch_forward(self, x: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = [torch.from_numpy(x[k]).to(self.device) for k in ("ids", "mask", "types")]
            return self.forward(*t).float().cpu().numpy()
