"""Generate the shipped compact WordNet graph from the WordNet 3.0 database files.

    python -m retrieval.kg.build_wordnet /usr/share/wordnet retrieval/kg/data

Reads ``data.noun``, ``index.noun``, ``index.sense`` and ``noun.exc`` (Debian's
``wordnet-base`` and ``wordnet-sense-index`` packages) directly, no nltk.
Nouns only: entity ids are ``n`` + the 8-digit synset offset, the same ids the
``lite`` encoder reports as image concepts (``n02123045`` = tabby cat).

Stored relations (inverses are derived on load):
``hypernym`` (@), ``instance_hypernym`` (@i), ``part_meronym`` (%p),
``member_meronym`` (%m), ``substance_meronym`` (%s). Per entity: display names
(lemmas), definition (gloss without examples), tag count (sum of its lemmas'
sense counts), depth (shortest hypernym path to ``entity``), lexicographer
file, and the number of hyponym-closure descendants. The lemma index keeps
WordNet's sense order and each (lemma, sense) tag count; the morphological
exception lists of nouns and verbs and the tag counts of verb and adjective
lemmas (so the linker can leave "running" or "white" alone) go to
``morphy.json``, which the linker uses for user graphs too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import KGError
from .graphfile import norm_key, write_graph

POINTERS = {
    "@": "hypernym",
    "@i": "instance_hypernym",
    "%p": "part_meronym",
    "%m": "member_meronym",
    "%s": "substance_meronym",
}
INVERSES = {
    "hypernym": "hyponym",
    "instance_hypernym": "instance_hyponym",
    "part_meronym": "part_holonym",
    "member_meronym": "member_holonym",
    "substance_meronym": "substance_holonym",
}
ROOT = "n00001740"  # entity.n.01

LICENCE_NAME = "LICENSE-WordNet.txt"
MORPHY_FILE = "morphy.json"


def _licence(src: Path) -> str:
    lines = []
    with open(src / "data.noun", encoding="latin-1") as fh:
        for line in fh:
            if not line.startswith("  "):
                break
            lines.append(line[2:].split(" ", 1)[1].rstrip() if " " in line[2:].strip() else "")
    text = "\n".join(lines).strip()
    return (
        "The compact graph in this directory (kg.json, entities.json.gz, graph.npz) is derived from\n"
        "WordNet 3.0 (nouns) by retrieval/kg/build_wordnet.py. WordNet's licence follows.\n\n"
        + text + "\n\nWordNet: https://wordnet.princeton.edu/  (George A. Miller (1995). WordNet: A Lexical\n"
        "Database for English. Communications of the ACM Vol. 38, No. 11: 39-41.)\n"
    )


@dataclass(frozen=True)
class SynsetLine:
    """One synset line of a WordNet ``data.*`` file, as written (the one parser of that format)."""

    offset: str  # 8 digits; the noun ids here and in ImageNet are "n" + offset
    lexfile: int  # lexicographer file number
    words: list[str]  # lemmas in file order, "_" read as a space (adjective markers left on)
    pointers: list[tuple[str, str, str]]  # (symbol such as "@", target offset, target part of speech)
    gloss: str  # the text after " | ": definition, then quoted examples


def read_synsets(path: str | Path, encoding: str = "latin-1", errors: str = "strict") -> Iterator[SynsetLine]:
    """The synsets of a WordNet 3.0 ``data.noun`` (or other ``data.*``) file, in file order."""
    with open(path, encoding=encoding, errors=errors) as fh:
        for line in fh:
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            w = int(f[3], 16)
            p = 4 + 2 * w
            pointers = [(f[p + 1 + 4 * k], f[p + 2 + 4 * k], f[p + 3 + 4 * k]) for k in range(int(f[p]))]
            yield SynsetLine(f[0], int(f[1]), [f[4 + 2 * k].replace("_", " ") for k in range(w)], pointers,
                             gloss.strip())


def read_sense_index(path: str | Path, encoding: str = "latin-1",
                     errors: str = "strict") -> Iterator[tuple[str, str, str, int]]:
    """(lemma as written, part of speech digit: 1 noun, 2 verb, 3 adjective, 4 adverb, 5 satellite
    adjective; synset offset; tag count) per line of WordNet's ``index.sense``."""
    with open(path, encoding=encoding, errors=errors) as fh:
        for line in fh:
            f = line.split()
            if len(f) == 4:
                lemma, _, rest = f[0].partition("%")
                yield lemma, rest[:1], f[1], int(f[3])


def read_exceptions(path: str | Path, encoding: str = "latin-1",
                    errors: str = "strict") -> Iterator[tuple[str, list[str]]]:
    """(inflected form, its base forms) per line of a WordNet ``*.exc`` file (``noun.exc``, ``verb.exc``)."""
    with open(path, encoding=encoding, errors=errors) as fh:
        for line in fh:
            f = line.split()
            if len(f) >= 2:
                yield f[0], f[1:]


def parse_data(src: Path):
    ids, names, glosses, lexfile, edges = [], [], [], [], []
    for s in read_synsets(src / "data.noun"):
        sid = "n" + s.offset
        edges += [(sid, POINTERS[sym], "n" + toff) for sym, toff, pos in s.pointers
                  if pos == "n" and sym in POINTERS]
        ids.append(sid)
        names.append(list(dict.fromkeys(s.words)))
        glosses.append(s.gloss.split('; "')[0].strip().rstrip(";").strip())
        lexfile.append(s.lexfile)
    return ids, names, glosses, lexfile, edges


def parse_sense_counts(src: Path) -> dict[tuple[str, str], int]:
    """(normalised lemma, synset id) -> tag count, from index.sense (nouns)."""
    counts: dict[tuple[str, str], int] = {}
    f = src / "index.sense"
    if not f.is_file():
        return counts
    for lemma, pos, off, cnt in read_sense_index(f):
        if pos == "1":
            counts[(norm_key(lemma), "n" + off)] = cnt
    return counts


def parse_index(src: Path) -> dict[str, list[str]]:
    """normalised lemma -> synset ids in WordNet's sense (frequency) order."""
    out: dict[str, list[str]] = {}
    with open(src / "index.noun", encoding="latin-1") as fh:
        for line in fh:
            if line.startswith("  "):
                continue
            f = line.split()
            lemma, syn_cnt, p_cnt = f[0], int(f[2]), int(f[3])
            offs = f[4 + p_cnt + 2:]
            assert len(offs) == syn_cnt, line
            lst = out.setdefault(norm_key(lemma), [])
            for o in offs:
                if "n" + o not in lst:
                    lst.append("n" + o)
    return out


def parse_exceptions(path: Path) -> dict[str, list[str]]:
    """normalised inflected form -> its normalised base forms, from a ``*.exc`` file."""
    exc: dict[str, list[str]] = {}
    for word, bases in read_exceptions(path):
        exc.setdefault(norm_key(word), []).extend(norm_key(x) for x in bases)
    return exc


def parse_other_pos(src: Path) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    """Tag counts of verb and adjective lemmas (to tell "running"/"white" from nouns) and verb.exc."""
    verbs: dict[str, int] = {}
    adjs: dict[str, int] = {}
    f = src / "index.sense"
    if f.is_file():
        for lemma, pos, _off, c in read_sense_index(f):
            if pos == "2":
                verbs[norm_key(lemma)] = verbs.get(norm_key(lemma), 0) + c
            elif pos in ("3", "5"):
                adjs[norm_key(lemma)] = adjs.get(norm_key(lemma), 0) + c
    vexc = parse_exceptions(src / "verb.exc") if (src / "verb.exc").is_file() else {}
    keep = lambda d: {k: v for k, v in sorted(d.items()) if v > 0 and " " not in k}  # noqa: E731
    return keep(verbs), keep(adjs), vexc


def build(src: str | Path, out: str | Path) -> Path:
    src = Path(src)
    if not (src / "data.noun").is_file():
        raise KGError(f"{src}: no WordNet database here (data.noun missing; install Debian's wordnet-base)")
    ids, names, glosses, lexfile, edges = parse_data(src)
    row = {s: i for i, s in enumerate(ids)}
    n = len(ids)
    rels: dict[str, tuple[list[int], list[int]]] = {r: ([], []) for r in INVERSES}
    for h, r, t in edges:
        rels[r][0].append(row[h])
        rels[r][1].append(row[t])
    relations = {r: (np.array(h, np.int64), np.array(t, np.int64)) for r, (h, t) in rels.items()}

    counts = parse_sense_counts(src)
    index = parse_index(src)
    lemmas = {k: [(row[s], counts.get((k, s), 0)) for s in v if s in row] for k, v in index.items()}
    ent_count = np.zeros(n, np.int32)
    for k, lst in lemmas.items():
        for i, c in lst:
            ent_count[i] += c

    # depth: shortest path from the root along hyponym / instance-hyponym edges
    children: list[list[int]] = [[] for _ in range(n)]
    for r in ("hypernym", "instance_hypernym"):
        for h, t in zip(*rels[r]):
            children[t].append(h)
    depth = np.full(n, -1, np.int16)
    depth[row[ROOT]] = 0
    dq = deque([row[ROOT]])
    order = []
    while dq:
        i = dq.popleft()
        order.append(i)
        for c in children[i]:
            if depth[c] < 0:
                depth[c] = depth[i] + 1
                dq.append(c)
    # size: number of distinct descendants (hyponym closure), by bitsets would be exact; a DAG
    # sum over children counts shared nodes twice, which is fine for ranking. Computed bottom-up.
    size = np.zeros(n, np.int32)
    for i in reversed(order):
        size[i] = sum(1 + size[c] for c in children[i])

    exc = parse_exceptions(src / "noun.exc")
    verb_counts, adj_counts, verb_exc = parse_other_pos(src)
    return write_graph(
        out,
        name="wordnet",
        ids=ids,
        names=names,
        glosses=glosses,
        relations=relations,
        inverses=INVERSES,
        lemmas=lemmas,
        arrays={"counts": ent_count, "depth": depth, "lexfile": np.array(lexfile, np.uint8), "size": size},
        extra={},
        meta={
            "source": "WordNet 3.0 (nouns), Princeton University",
            "licence": LICENCE_NAME,
            "id_scheme": "n + 8-digit synset offset (as ImageNet wnids)",
            "root": ROOT,
        },
        extra_files=[
            (LICENCE_NAME, _licence(src)),
            (MORPHY_FILE, json.dumps({"noun_exceptions": exc, "verb_exceptions": verb_exc,
                                      "verb_counts": verb_counts, "adj_counts": adj_counts},
                                     sort_keys=True, separators=(",", ":"))),
        ],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wordnet_dir", help="folder with data.noun, index.noun, index.sense, noun.exc")
    ap.add_argument("out_dir", help="output graph directory (e.g. retrieval/kg/data)")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    out = build(a.wordnet_dir, a.out_dir)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
