"""User triples: import round trip (TSV, N-Triples, Turtle), labels, malformed lines, atomic output."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from cli import main
from retrieval.errors import KGError, UsageError
from retrieval.kg import import_triples, load_graph

TSV = (
    "# pets\n"
    "ex:rex\tis_a\tex:dog\n"
    "ex:dog\tis_a\tex:animal\n"
    "\n"
    "ex:rex\tlabel\tRex\n"
    "ex:rex\talias\tthe good boy\n"
    "ex:dog\tgloss\ta domesticated canine\n"
    "ex:rex\towned_by\tex:ann\n"
)


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_tsv_round_trip(tmp_path):
    (tmp_path / "pets.tsv").write_text(TSV)
    r = import_triples(tmp_path / "pets.tsv", tmp_path / "kg")
    assert (r.entities, r.edges, r.relations, r.skipped) == (4, 3, {"is_a": 2, "owned_by": 1}, 0)
    g = load_graph(tmp_path / "kg")
    assert g.name == "pets" and len(g) == 4
    rex = g.entity("ex:rex")
    assert rex.names == ["Rex", "the good boy"]
    assert g.entity("ex:dog").gloss == "a domesticated canine"
    assert g.entity("ex:ann").names == ["ann"]  # no label: the id's local name
    assert g.neighbours("ex:rex", "is_a") == ["ex:dog"]
    assert g.neighbours("ex:dog", "~is_a") == ["ex:rex"]
    assert sorted(g.relations) == ["is_a", "owned_by", "~is_a", "~owned_by"]
    assert g.find("The Good Boy") == ["ex:rex"] and g.find("dog") == ["ex:dog"]
    # the same input gives byte-identical files (fingerprints key the caches)
    import_triples(tmp_path / "pets.tsv", tmp_path / "kg2")
    assert load_graph(tmp_path / "kg2").fingerprint == g.fingerprint


def test_labels_file(tmp_path):
    (tmp_path / "t.tsv").write_text("Q1\tP31\tQ2\n")
    (tmp_path / "labels.tsv").write_text("Q1\tFido\tdoggo\nQ2\tdog\n")
    import_triples(tmp_path / "t.tsv", tmp_path / "kg", labels=tmp_path / "labels.tsv")
    g = load_graph(tmp_path / "kg")
    assert g.entity("Q1").names == ["Fido", "doggo"] and g.find("doggo") == ["Q1"]


@pytest.mark.parametrize("content, line, what", [
    ("a\tr\tb\nbroken line\nc\tr\td\n", 2, "found 1 tab-separated field"),
    ("a\tr\tb\n\n# ok\nx\ty\tz\tw\n", 4, "found 4"),
    ("a\tr\tb\na\t\tb\n", 2, "empty head, relation or tail"),
])
def test_malformed_tsv_names_file_and_line_and_writes_nothing(tmp_path, content, line, what):
    src = tmp_path / "bad.tsv"
    src.write_text(content)
    with pytest.raises(KGError) as e:
        import_triples(src, tmp_path / "out")
    assert f"{src}:{line}:" in str(e.value) and what in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_invalid_utf8_is_a_line_error(tmp_path):
    src = tmp_path / "bad.tsv"
    src.write_bytes(b"a\tr\tb\n\xff\xfe\tr\tc\n")
    with pytest.raises(KGError, match=r"bad.tsv:2: not valid UTF-8"):
        import_triples(src, tmp_path / "out")


def test_skip_bad_lines_counts_them(tmp_path):
    src = tmp_path / "bad.tsv"
    src.write_text("a\tr\tb\nbroken\nc\tr\td\nalso broken\n")
    r = import_triples(src, tmp_path / "out", skip_bad_lines=True)
    assert (r.skipped, r.skipped_lines, r.edges, r.entities) == (2, [2, 4], 2, 4)


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    (tmp_path / "t.tsv").write_text("a\tr\tb\n")
    import_triples(tmp_path / "t.tsv", tmp_path / "kg")
    with pytest.raises(KGError, match="already exists"):
        import_triples(tmp_path / "t.tsv", tmp_path / "kg")
    (tmp_path / "t.tsv").write_text("a\tr\tb\nb\tr\tc\n")
    assert import_triples(tmp_path / "t.tsv", tmp_path / "kg", overwrite=True).edges == 2
    assert leftovers(tmp_path) == []


def test_empty_and_unknown_inputs(tmp_path):
    (tmp_path / "e.tsv").write_text("# nothing\n\n")
    with pytest.raises(KGError, match="no triples"):
        import_triples(tmp_path / "e.tsv", tmp_path / "o")
    (tmp_path / "t.csv").write_text("a,b,c\n")
    with pytest.raises(UsageError, match="--format"):
        import_triples(tmp_path / "t.csv", tmp_path / "o")
    with pytest.raises(KGError, match="no such triples file"):
        import_triples(tmp_path / "missing.tsv", tmp_path / "o")
    assert not (tmp_path / "o").exists()


NT = """<http://ex.org/rex> <http://ex.org/isA> <http://ex.org/dog> .
<http://ex.org/rex> <http://www.w3.org/2000/01/rdf-schema#label> "Rex"@en .
<http://ex.org/dog> <http://www.w3.org/2004/02/skos/core#altLabel> "hound" .
<http://ex.org/dog> <http://www.w3.org/2000/01/rdf-schema#comment> "a canine" .
<http://ex.org/dog> <http://ex.org/weight> "30"^^<http://www.w3.org/2001/XMLSchema#integer> .
"""


def test_ntriples_round_trip_and_errors(tmp_path):
    pytest.importorskip("rdflib")
    (tmp_path / "g.nt").write_text(NT)
    r = import_triples(tmp_path / "g.nt", tmp_path / "kg")
    g = load_graph(tmp_path / "kg")
    assert r.relations == {"isA": 1}
    assert g.entity("http://ex.org/rex").names == ["Rex"]
    dog = g.entity("http://ex.org/dog")
    assert dog.names == ["dog", "hound"] and dog.gloss == "a canine"
    (tmp_path / "bad.nt").write_text(NT + "<http://ex.org/a> <http://ex.org/b> .\n")
    with pytest.raises(KGError, match=r"bad.nt:6: not an N-Triples statement"):
        import_triples(tmp_path / "bad.nt", tmp_path / "kg3")
    assert not (tmp_path / "kg3").exists()
    assert import_triples(tmp_path / "bad.nt", tmp_path / "kg3", skip_bad_lines=True).skipped == 1


def test_turtle_round_trip_and_error_line(tmp_path):
    pytest.importorskip("rdflib")
    ttl = ("@prefix ex: <http://ex.org/> .\n@prefix skos: <http://www.w3.org/2004/02/skos/core#> .\n"
           "ex:rex ex:isA ex:dog .\nex:dog ex:isA ex:animal ;\n  skos:prefLabel \"dog\" .\n")
    (tmp_path / "g.ttl").write_text(ttl)
    import_triples(tmp_path / "g.ttl", tmp_path / "kg")
    g = load_graph(tmp_path / "kg")
    assert g.neighbours("http://ex.org/dog", "isA") == ["http://ex.org/animal"]
    (tmp_path / "bad.ttl").write_text(ttl + "ex:oops ex:isA .\n")
    with pytest.raises(KGError, match=r"bad.ttl:6: not valid Turtle"):
        import_triples(tmp_path / "bad.ttl", tmp_path / "kg2")
    assert not (tmp_path / "kg2").exists()


def test_missing_rdflib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdflib", None)
    (tmp_path / "g.nt").write_text(NT)
    with pytest.raises(KGError, match=r"pip install 'kgclip\[rdf\]'"):
        import_triples(tmp_path / "g.nt", tmp_path / "kg")


def test_cli_import_info_and_errors(tmp_path):
    (tmp_path / "pets.tsv").write_text(TSV)
    run = CliRunner().invoke
    r = run(main, ["kg", "import", str(tmp_path / "pets.tsv"), "-o", str(tmp_path / "kg")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"wrote {tmp_path / 'kg'}: 4 entities, 3 edges")
    r = run(main, ["kg", "info", str(tmp_path / "kg"), "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output)["entities"] == 4
    r = run(main, ["kg", "link", "the good boy and a dog", "--kg", str(tmp_path / "kg"), "--format", "json",
                   "--sense-model", "none"])
    assert [x["entity_id"] for x in json.loads(r.output)] == ["ex:rex", "ex:dog"]
    (tmp_path / "bad.tsv").write_text("a\tb\n")
    r = run(main, ["kg", "import", str(tmp_path / "bad.tsv"), "-o", str(tmp_path / "kg2")])
    assert r.exit_code == 1 and "bad.tsv:1:" in r.output and not (tmp_path / "kg2").exists()
    r = run(main, ["kg", "import", str(tmp_path / "bad.tsv"), "-o", str(tmp_path / "kg2"), "--skip-bad-lines",
                   "--json"])
    assert r.exit_code == 1 and "no triples" in r.output
