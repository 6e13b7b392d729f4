"""Lists of choices that several layers offer (the CLI's options, the library's arguments, the
benchmarks): each is defined here once and imported everywhere else. Nothing heavy is imported, so the
CLI can build its options without loading numpy."""

from __future__ import annotations

# what the knowledge graph's Expander does with a query: nothing, one mixed vector, or one vector per
# expansion fused by the searcher
EXPANSIONS = ("none", "mix", "multi")
# what a search may ask for (--expand): one of EXPANSIONS, or "auto" (the searcher expands short
# queries only, when a knowledge graph is available)
EXPAND_MODES = ("auto", *EXPANSIONS)
# --hybrid: caption fusion; "auto" = sum when the index has captions and the query has text
HYBRID_MODES = ("auto", "none", "sum", "rrf")
# --format of search results and image->caption results
RESULT_FORMATS = ("table", "json", "jsonl", "paths")
# FAISS index types (indexer.faiss.choose): auto picks one by size and memory budget
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
# triple file formats `kgclip kg import` reads
TRIPLE_FORMATS = ("tsv", "nt", "ttl")
