"""Loading the knowledge graph's Expander for a searcher (linking, expansion, concept targets)."""

from __future__ import annotations


def make_expander(kg_path: str | None, encoder, device: str | None = "auto"):
    """Load the KG (None = shipped WordNet) and build its Expander (linker and policy defaults).

    The linker's sense encoder is sbert:minilm, or the index model's own loaded text encoder when it
    offers one (``Encoder.sense_text_encoder()``), so one model is not loaded twice."""
    # imported on the first expanded query: the KG package (graph files, WordNet, linking) costs a
    # cold `kgclip search` that never expands 20-40 ms
    from .. import kg as kgmod

    reuse = getattr(encoder, "sense_text_encoder", None)  # shim until the encoders branch merges
    sense = (reuse() if reuse is not None else None) or "sbert:minilm"
    return kgmod.Expander(kgmod.load_graph(kg_path), sense_encoder=sense)
