"""open_clip encoders.

Spec forms (after the ``open_clip:`` prefix):

- ``MODEL/PRETRAINED_TAG``  e.g. ``ViT-B-32/laion2b_s34b_b79k`` (weights from the
  local cache, or downloaded where the hub is reachable)
- ``MODEL@CHECKPOINT``      a local ``.pt``/``.bin``/``.safetensors`` file
- ``local-dir:DIR``         a folder with ``open_clip_config.json`` and weights
- ``MODEL``                 random init (tests and speed benchmarks only)
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import ModelError, WeightsNotFound
from ..paths import offline
from . import onnx
from .base import Encoder, ImageBatch, image_batch_tensor, l2_normalize, weights_signature

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def _hub_reachable(url: str | None = None) -> bool:
    """A bounded probe, so a machine without internet fails in seconds, not after long retries."""
    host = urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_weights(cfg: dict) -> str | None:
    """Path of a tag's weights in the local caches, or None."""
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        names = [n.replace(".bin", ".safetensors").replace(".pth", ".safetensors") for n in names] + names
        names = [n if n.endswith((".safetensors", ".bin", ".pt", ".pth")) else n for n in names]
        names += ["open_clip_model.safetensors"]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    url = cfg.get("url", "")
    if url:
        p = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
        if p.is_file():
            return str(p)
    return None


def resolve_pretrained(model: str, tag: str) -> tuple[str, dict]:
    """Local path of ``model``'s weights for ``tag``, downloading only where the hub is reachable."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ModelError(
            f"open_clip model {model!r} has no pretrained tag {tag!r}; known tags: {', '.join(tags) or 'none'}"
        )
    path = _cached_weights(cfg)
    if path:
        return path, cfg
    where = cfg.get("hf_hub") or cfg.get("url") or "the model hub"
    how = (
        f"weights for open_clip:{model}/{tag} are not in the local cache and cannot be downloaded "
        f"({{why}}): download {where} on a machine with internet, or pass a local file as "
        f"open_clip:{model}@/path/to/weights.safetensors"
    )
    if offline():
        raise WeightsNotFound(how.format(why="offline mode is set"))
    if not _hub_reachable(cfg.get("url") if not cfg.get("hf_hub") else None):
        raise WeightsNotFound(how.format(why="the model hub is unreachable"))
    try:
        return open_clip.download_pretrained(cfg), cfg
    except Exception as e:  # network and hub errors come in many types
        raise WeightsNotFound(how.format(why=f"download failed: {e}")) from None


class TorchPreprocess:
    """Wrap a torchvision preprocess so decode workers get float32 numpy CHW arrays."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, img) -> np.ndarray:
        return self.preprocess(img).numpy().astype(np.float32, copy=False)


class OpenClipEncoder(Encoder):
    family = "open_clip"

    def __init__(self, spec: str, rest: str, device: str | None = "auto", batch_size: int = 32):
        super().__init__(spec, device, batch_size)
        if not rest:
            raise ModelError("open_clip spec needs a model: open_clip:MODEL/TAG, MODEL@FILE or local-dir:DIR")
        self.local_dir: str | None = None
        self.checkpoint: str | None = None
        self.tag: str | None = None
        if rest.startswith("local-dir:"):
            self.local_dir = rest[len("local-dir:") :]
            self.model_name = f"local-dir:{self.local_dir}"
            if not Path(self.local_dir).is_dir():
                raise ModelError(f"open_clip local-dir {self.local_dir!r} is not a folder")
            if not (Path(self.local_dir) / "open_clip_config.json").is_file():
                raise ModelError(f"open_clip local-dir {self.local_dir!r} has no open_clip_config.json")
        elif "@" in rest:
            self.model_name, _, self.checkpoint = rest.partition("@")
            if not Path(self.checkpoint).is_file():
                raise WeightsNotFound(f"open_clip checkpoint {self.checkpoint!r} does not exist")
        else:
            self.model_name, _, tag = rest.partition("/")
            self.tag = tag or None
        self.fast_text = True

    # -- loading ---------------------------------------------------------------
    def _load(self) -> None:
        import open_clip
        import torch

        kwargs: dict = {}
        pretrained = None
        if self.local_dir is None and self.model_name not in open_clip.list_models():
            raise ModelError(f"unknown open_clip model {self.model_name!r}; see open_clip.list_models()")
        if self.checkpoint:
            pretrained = self.checkpoint
        elif self.tag:
            pretrained, cfg = resolve_pretrained(self.model_name, self.tag)
            for k_cfg, k_arg in (("mean", "image_mean"), ("std", "image_std"),
                                 ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
                if k_cfg in cfg:
                    kwargs[k_arg] = cfg[k_cfg]
            if cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
        precision = "fp16" if self.device.startswith("cuda") else "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=pretrained, device=self.device, precision=precision, **kwargs
            )
            self.tokenizer = open_clip.get_tokenizer(self.model_name)
        except (RuntimeError, ValueError, FileNotFoundError, KeyError, OSError) as e:
            raise ModelError(f"cannot load open_clip model {self.spec!r}: {str(e).splitlines()[0]}") from None
        model.eval()
        if not self.device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.preprocess = preprocess
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *self._image_size(), device=self.device)
            if precision == "fp16":
                probe = probe.half()
            self._dim = int(model.encode_image(probe).shape[-1])
        self.fast_text = self._fast_text_supported()
        self._ort_text = None
        if self.fast_text:
            if onnx.wanted(self.device) and _plain_text_tower(model):
                self._ort_text = onnx.load_or_export("openclip-text", self._text_signature(), self._export_text,
                                                     self._check_text, tolerance=1e-4)

    def _text_signature(self) -> str:
        """Model name plus a hash of every text-tower tensor's shape and leading bytes (tells random
        inits and checkpoints apart without hashing hundreds of MB)."""
        h = hashlib.sha256(self.model_name.encode())
        for name, t in self.model.state_dict().items():
            if name.startswith("visual."):
                continue
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.detach().reshape(-1)[: 1 << 10].float().cpu().numpy().tobytes())  # first 4 KiB
        return h.hexdigest()[:16]

    def _export_text(self, path: str) -> None:
        tokens = self.tokenizer(["a photo of a dog", "x"])[:, :9]
        onnx.export_module(_text_forward_module()(self.model), (tokens,), path, ["tokens"],
                           {"tokens": {0: "batch", 1: "length"}})

    def _check_text(self, model) -> float:
        """Largest difference (unit vectors) from the padded torch encode_text on texts of mixed lengths."""
        import torch

        texts = ["a dog catching a frisbee in the park on a sunny afternoon", "x", "two red cars"]
        tokens = self.tokenizer(texts)
        with torch.inference_mode():
            ref = l2_normalize(self.model.encode_text(tokens).float().numpy())
        length = _real_length(tokens)
        got = l2_normalize(model.run(tokens=tokens[:, :length].numpy().astype(np.int64)))
        return float(np.abs(got - ref).max())

    def _image_size(self) -> tuple[int, int]:
        size = getattr(self.model.visual, "image_size", 224)
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def _weights_hash(self) -> str:
        if self.checkpoint:
            return weights_signature([self.checkpoint])
        if self.local_dir:
            return weights_signature([self.local_dir])
        if self.tag:
            self.load()
            return weights_signature([], extra=f"{self.model_name}/{self.tag}") + "-" + self._param_hash()
        return "random-init-" + self._param_hash()

    def _param_hash(self) -> str:
        """Hash of a few parameter tensors: identifies the actual weights (and random inits)."""
        self.load()
        h = hashlib.sha256()
        params = list(self.model.parameters())
        for p in params[:3] + params[-3:]:
            h.update(p.detach().reshape(-1)[: 1 << 14].float().cpu().numpy().tobytes())  # first 64 KiB
        return h.hexdigest()[:12]

    # -- images ----------------------------------------------------------------
    def image_transform(self):
        self.load()
        return TorchPreprocess(self.preprocess)

    def encode_image_arrays(self, batch: np.ndarray, with_concepts: bool = False) -> ImageBatch:
        import torch

        self.load()
        with torch.inference_mode():
            v = self.model.encode_image(image_batch_tensor(batch, self.device)).float().cpu().numpy()
        return ImageBatch(l2_normalize(v), None)

    # -- texts -----------------------------------------------------------------
    def _fast_text_supported(self) -> bool:
        """The truncated path applies to open_clip.CLIP with a causal mask and EOT (argmax) pooling,
        and is kept only where it reproduces the padded result numerically."""
        import torch

        m = self.model
        if not all(hasattr(m, a) for a in ("token_embedding", "positional_embedding", "attn_mask", "ln_final")):
            return False
        if getattr(m, "text_pool_type", None) != "argmax" or m.attn_mask is None:
            return False
        probe = ["a photo of a dog catching a frisbee", "x"]
        try:
            tokens = self.tokenizer(probe).to(self.device)
            with torch.inference_mode():
                full = m.encode_text(tokens).float()
                fast = self._encode_tokens_fast(tokens).float()
        except Exception as e:  # any mismatch in internals disables the optimisation
            log.debug("fast text path disabled: %s", e)
            return False
        tol = 2e-2 if self.device.startswith("cuda") else 1e-4
        return bool(torch.allclose(full, fast, atol=tol, rtol=tol))

    def _encode_tokens_fast(self, tokens):
        """encode_text over only the first L positions, L = longest real sequence in the batch.

        With a causal mask the EOT position attends to nothing after itself, so the
        truncated sequence yields the same pooled feature as the padded one.
        """
        from open_clip.transformer import text_global_pool
        import torch.nn as nn

        m = self.model
        length = _real_length(tokens)
        t = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(t).to(cast)
        x = x + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, t, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return x

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._ort_text is not None:
            tokens = self.tokenizer(texts)
            return self._ort_text.run(tokens=tokens[:, :_real_length(tokens)].numpy().astype(np.int64))
        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            x = self._encode_tokens_fast(tokens) if self.fast_text else self.model.encode_text(tokens)
        return x.float().cpu().numpy()

    def encode_texts(self, texts):
        # Sort by length so each batch is truncated to its own longest text.
        texts = [str(t) for t in texts]
        if not self.fast_text or len(texts) <= self.batch_size:
            return super().encode_texts(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = super().encode_texts([texts[i] for i in order])
        res = np.empty_like(out)
        res[order] = out
        return res


def _real_length(tokens) -> int:
    """Length of the longest real (non-padding) token sequence in a padded batch."""
    return int((tokens != 0).int().cumsum(dim=1).argmax(dim=1).max().item()) + 1


def _plain_text_tower(m) -> bool:
    """True for the standard CLIP text tower that :func:`_text_forward_module` reproduces: pre-norm
    residual blocks of nn.MultiheadAttention + MLP (optional layer scale), causal mask, argmax (EOT)
    pooling."""
    import torch.nn as nn

    blocks = getattr(getattr(m, "transformer", None), "resblocks", None)
    if blocks is None or getattr(m, "text_pool_type", None) != "argmax" or getattr(m, "attn_mask", None) is None:
        return False
    for b in blocks:
        if not isinstance(getattr(b, "attn", None), nn.MultiheadAttention) or hasattr(b, "ln_1_kv"):
            return False
        if not all(hasattr(b, a) for a in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")):
            return False
        if b.attn.in_proj_weight is None or b.attn.bias_k is not None:
            return False
    return True


def _text_forward_module():
    import torch
    import torch.nn.functional as F

    class TextForward(torch.nn.Module):
        """CLIP text features from tokens truncated to the batch's longest real sequence, written with
        plain ops (nn.MultiheadAttention's traced graph fixes the sequence length) so it exports to ONNX
        with dynamic batch and length. The caller checks it against the padded encode_text."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            m = self.m
            n = t.shape[1]
            x = m.token_embedding(t) + m.positional_embedding[:n]
            for blk in m.transformer.resblocks:
                b, d = x.shape[0], x.shape[2]
                heads = blk.attn.num_heads
                h = blk.ln_1(x)
                q, k, v = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
                q, k, v = (z.reshape(b, n, heads, d // heads).transpose(1, 2) for z in (q, k, v))
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=m.attn_mask[:n, :n])
                a = blk.attn.out_proj(a.transpose(1, 2).reshape(b, n, d))
                x = x + blk.ls_1(a)
                x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            x = m.ln_final(x)
            x = x[torch.arange(x.shape[0]), t.argmax(dim=-1)]
            proj = m.text_projection
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return TextForward
