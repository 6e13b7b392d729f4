"""Loading the knowledge graph's Expander for a searcher (linking, expansion, concept targets)."""

from __future__ import annotations

from .. import kg as kgmod
from ..encoders.base import SENSE_TEXT_MODEL


def make_expander(kg_path: str | None, encoder, device: str | None = "auto"):
    """Load the KG (None = shipped WordNet) and build its Expander (linker and policy defaults).

    The linker's sense encoder is sbert:minilm, or the index model's own loaded text encoder when it
    offers one (``Encoder.sense_text_encoder()``), so one model is not loaded twice."""
    sense = encoder.sense_text_encoder() or SENSE_TEXT_MODEL
    return kgmod.Expander(kgmod.load_graph(kg_path), sense_encoder=sense)
