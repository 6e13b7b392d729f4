"""Knowledge-graph query expansion: graphs, linking, entity embeddings, expansion, grounding.

    from retrieval.kg import load_graph, Expander
    ex = Expander(load_graph())                 # shipped WordNet 3.0 nouns
    plan = ex.plan("puppies in the snow")       # linked entities + weighted expansions
    vecs, weights, plan = ex.query_vectors("puppies in the snow", encoder, mode="mix")
"""

from .embeddings import EntityEmbeddings
from .expansion import ExpansionPolicy, Expander
from .graph import Entity, Graph, load_graph
from .linking import Link, Linker, LinkerConfig
from .morphology import Morphology
from .triples import import_triples  # rdflib is imported only for RDF files

__all__ = [
    "Entity", "Graph", "load_graph", "Link", "Linker", "LinkerConfig", "Morphology", "EntityEmbeddings",
    "ExpansionPolicy", "Expander", "import_triples",
]
