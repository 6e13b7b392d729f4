"""Import user knowledge graphs (TSV or RDF triples) into the compact graph form.

TSV: one ``head<TAB>relation<TAB>tail`` per line; blank lines and ``#``
comments are ignored. Relations ``label``/``name`` and ``alias`` set display
names, ``gloss``/``description``/``definition``/``comment`` set glosses; every
other relation becomes a graph relation (walked forward, and backward as
``~relation``). An optional labels file has ``id<TAB>label[<TAB>alias...]``.

N-Triples (``.nt``) and Turtle (``.ttl``) go through rdflib (the ``rdf``
extra). rdfs:label / skos:prefLabel / schema:name name entities, skos:altLabel
adds aliases, rdfs:comment / skos:definition give glosses; other predicates
between resources become relations named by their local name.

A malformed line raises :class:`KGError` naming the file and line, or, with
``skip_bad_lines``, is skipped and counted. Output is written to a temporary
directory and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..choices import TRIPLE_FORMATS
from ..errors import KGError, UsageError
from ..safefile import open_regular
from .graphfile import read_meta, write_graph

LABEL = {"label", "name", "rdfs:label", "preflabel", "skos:preflabel"}
ALIAS = {"alias", "altlabel", "skos:altlabel", "synonym_label"}
GLOSS = {"gloss", "description", "definition", "comment", "rdfs:comment", "skos:definition"}
RDF_LABEL = {"http://www.w3.org/2000/01/rdf-schema#label", "http://www.w3.org/2004/02/skos/core#prefLabel",
             "http://schema.org/name", "https://schema.org/name", "http://xmlns.com/foaf/0.1/name"}
RDF_ALIAS = {"http://www.w3.org/2004/02/skos/core#altLabel"}
RDF_GLOSS = {"http://www.w3.org/2000/01/rdf-schema#comment", "http://www.w3.org/2004/02/skos/core#definition",
             "http://schema.org/description", "https://schema.org/description"}
FORMATS = TRIPLE_FORMATS
_EXT = {".tsv": "tsv", ".txt": "tsv", ".tab": "tsv", ".nt": "nt", ".ntriples": "nt", ".ttl": "ttl",
        ".turtle": "ttl"}


@dataclass
class ImportReport:
    """What an import read and wrote."""

    source: str
    output: str
    format: str
    entities: int = 0
    edges: int = 0
    relations: dict[str, int] = field(default_factory=dict)
    labels: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)  # the first 20

    def to_dict(self):
        return asdict(self)


class _Builder:
    def __init__(self):
        self.row: dict[str, int] = {}
        self.ids: list[str] = []
        # names per entity row, kept as insertion-ordered dicts so that adding or moving one is O(1)
        # (a list's `in` and insert(0) made 80k aliases of one entity take minutes): `front` holds the
        # labels, the latest last; `rest` the aliases in file order
        self.front: dict[int, dict[str, None]] = {}
        self.rest: dict[int, dict[str, None]] = {}
        self.gloss: dict[int, str] = {}
        self.edges: dict[str, tuple[list[int], list[int]]] = {}
        self.n_labels = 0
        self.primary: set[int] = set()  # entities with a label (not only aliases)

    def ent(self, eid: str) -> int:
        r = self.row.get(eid)
        if r is None:
            r = self.row[eid] = len(self.ids)
            self.ids.append(eid)
        return r

    def add(self, head: str, rel: str, tail: str) -> None:
        key = rel.lower()
        if key in LABEL:
            self.label(head, tail, first=True)
        elif key in ALIAS:
            self.label(head, tail)
        elif key in GLOSS:
            self.gloss.setdefault(self.ent(head), tail)
        else:
            h, t = self.ent(head), self.ent(tail)
            hs, ts = self.edges.setdefault(rel, ([], []))
            hs.append(h)
            ts.append(t)

    def label(self, eid: str, text: str, first: bool = False) -> None:
        """Add a name; a label (``first``) goes in front of the names seen so far, even when known."""
        text = " ".join(text.split())
        if not text:
            return
        row = self.ent(eid)
        front, rest = self.front.setdefault(row, {}), self.rest.setdefault(row, {})
        known = text in front or text in rest
        if first:
            self.primary.add(row)
            front.pop(text, None)
            rest.pop(text, None)
            front[text] = None
        elif not known:
            rest[text] = None
        if not known:
            self.n_labels += 1

    def names(self, row: int) -> list[str]:
        """The entity's names: the latest label first, then the earlier labels, then the aliases."""
        return [*reversed(self.front.get(row, {})), *self.rest.get(row, {})]


def local_name(eid: str) -> str:
    """A readable name from an id or URI: the part after the last '#', '/' or ':', '_' as spaces."""
    tail = re.split(r"[#/:]", eid.rstrip("/#"))[-1] or eid
    return " ".join(tail.replace("_", " ").split()) or eid


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    with open_regular(path, "triples file", error=KGError) as fh:  # a FIFO or a device: one line, no hang
        for no, raw in enumerate(fh, 1):
            try:
                yield no, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield no, None


class _Bad:
    def __init__(self, path: Path, skip: bool, report: ImportReport):
        self.path, self.skip, self.report = path, skip, report

    def __call__(self, no: int, why: str) -> None:
        if not self.skip:
            raise KGError(f"{self.path}:{no}: {why} (use --skip-bad-lines to skip such lines)")
        self.report.skipped += 1
        if len(self.report.skipped_lines) < 20:
            self.report.skipped_lines.append(no)


def _content_lines(path: Path, bad: _Bad):
    """(line number, line) of each non-blank, non-comment line; invalid UTF-8 is reported to ``bad``."""
    for no, line in _lines(path):
        if line is None:
            bad(no, "not valid UTF-8")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        yield no, line


def _tsv_rows(path: Path, bad: _Bad):
    """(line number, stripped tab-separated fields) of each content line."""
    for no, line in _content_lines(path, bad):
        yield no, [p.strip() for p in line.split("\t")]


def _read_tsv(path: Path, b: _Builder, bad: _Bad) -> None:
    for no, parts in _tsv_rows(path, bad):
        if len(parts) != 3:
            bad(no, f"expected head<TAB>relation<TAB>tail, found {len(parts)} tab-separated field(s)")
            continue
        if not all(parts):
            bad(no, "empty head, relation or tail")
            continue
        b.add(*parts)


def _read_labels(path: Path, b: _Builder, bad: _Bad) -> None:
    for no, parts in _tsv_rows(path, bad):
        if len(parts) < 2 or not parts[0] or not parts[1]:
            bad(no, "expected id<TAB>label[<TAB>alias ...]")
            continue
        b.label(parts[0], parts[1], first=True)
        for a in parts[2:]:
            b.label(parts[0], a)


def _rdflib():
    try:
        import rdflib
    except ImportError:
        raise KGError("reading N-Triples/Turtle needs rdflib: "
                      "pip install 'kgclip[rdf]' (or pip install rdflib)") from None
    return rdflib


def _add_rdf(b: _Builder, s, p, o, rdflib) -> bool:
    """Add one RDF statement; False when it carries nothing the graph keeps."""
    Literal = rdflib.Literal
    ps = str(p)
    if isinstance(o, Literal):
        if getattr(o, "language", None) not in (None, "", "en") and not str(o.language).startswith("en"):
            return False
        if ps in RDF_LABEL:
            b.label(str(s), str(o), first=True)
        elif ps in RDF_ALIAS:
            b.label(str(s), str(o))
        elif ps in RDF_GLOSS:
            b.gloss.setdefault(b.ent(str(s)), " ".join(str(o).split()))
        else:
            return False
        return True
    b.add(str(s), local_name(ps).replace(" ", "_"), str(o))
    return True


def _parse_nt_line(parser, line: str) -> None:
    """Parse one N-Triples line. rdflib's own line reader re-scans the line for its end once per 2 KB
    it reads (quadratic in the line's length: a 1 MB IRI took minutes), so hand it the line, which
    :func:`_content_lines` already split, directly; parsestring is the fallback for another rdflib."""
    if hasattr(parser, "parseline"):
        parser.line = line
        parser.parseline()
    else:  # pragma: no cover - an rdflib without parseline
        parser.parsestring(line)


def _read_nt(path: Path, b: _Builder, bad: _Bad) -> None:
    rdflib = _rdflib()
    from rdflib.plugins.parsers.ntriples import W3CNTriplesParser

    class Sink:
        def __init__(self):
            self.got = []

        def triple(self, s, p, o):
            self.got.append((s, p, o))

    sink = Sink()
    parser = W3CNTriplesParser(sink)
    for no, line in _content_lines(path, bad):
        sink.got.clear()
        try:
            _parse_nt_line(parser, line)
        except Exception as e:  # rdflib raises ParseError and friends
            bad(no, f"not an N-Triples statement ({str(e).splitlines()[0][:120]})")
            continue
        for s, p, o in sink.got:
            _add_rdf(b, s, p, o, rdflib)


def _read_ttl(path: Path, b: _Builder, bad: _Bad) -> None:
    rdflib = _rdflib()
    g = rdflib.Graph()
    try:
        g.parse(str(path), format="turtle")
    except Exception as e:
        msg = " ".join(str(e).split())
        m = re.search(r"line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise KGError(f"{where}: not valid Turtle ({msg[:200]})"
                      + ("; --skip-bad-lines cannot skip inside Turtle, fix the file or use N-Triples"
                         if bad.skip else "")) from None
    for s, p, o in sorted(g, key=lambda t: (str(t[0]), str(t[1]), str(t[2]))):
        _add_rdf(b, s, p, o, rdflib)


def guess_format(path: str | os.PathLike) -> str:
    fmt = _EXT.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: cannot tell the triples format from the extension; pass --format "
                         f"({'|'.join(FORMATS)})")
    return fmt


def import_triples(source: str | os.PathLike, out_dir: str | os.PathLike, fmt: str | None = None,
                   labels: str | os.PathLike | None = None, skip_bad_lines: bool = False,
                   name: str | None = None, overwrite: bool = False) -> ImportReport:
    """Convert a triples file (and optional labels file) into a graph directory at ``out_dir``."""
    src = Path(source)
    if not src.is_file():
        raise KGError(f"{src}: no such triples file")
    fmt = (fmt or guess_format(src)).lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown triples format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise KGError(f"{out} already exists: choose a new output directory or pass --force")
    report = ImportReport(str(src), str(out), fmt)
    b = _Builder()
    {"tsv": _read_tsv, "nt": _read_nt, "ttl": _read_ttl}[fmt](src, b, _Bad(src, skip_bad_lines, report))
    if labels is not None:
        lp = Path(labels)
        if not lp.is_file():
            raise KGError(f"{lp}: no such labels file")
        _read_labels(lp, b, _Bad(lp, skip_bad_lines, report))
    if not b.ids:
        raise KGError(f"{src}: no triples found")
    names = [b.names(i) if i in b.primary else list(dict.fromkeys([local_name(eid), *b.names(i)]))
             for i, eid in enumerate(b.ids)]
    glosses = [b.gloss.get(i, "") for i in range(len(b.ids))]
    relations = {r: (np.array(h, np.int64), np.array(t, np.int64)) for r, (h, t) in b.edges.items()}
    write_graph(out, name=name or src.stem, ids=b.ids, names=names, glosses=glosses, relations=relations,
                meta={"source": f"{src.name} ({fmt})"}, overwrite=overwrite)
    md = read_meta(out)
    report.entities, report.relations = md["entities"], dict(md["edges"])
    report.edges = sum(report.relations.values())
    report.labels = b.n_labels
    return report
