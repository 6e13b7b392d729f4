"""`kgclip kg` commands on the shipped WordNet (frequency-only senses keep them model-free)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_kg_info_table_and_json():
    r = run("kg", "info")
    assert r.exit_code == 0, r.output
    assert "name:        wordnet" in r.output and "entities:    82115" in r.output and "hypernym" in r.output
    d = json.loads(run("kg", "info", "wordnet", "--format", "json").output)
    assert d["entities"] == 82115 and "hyponym" in d["relations"] and d["licence"] == "LICENSE-WordNet.txt"


def test_kg_link_table_and_json():
    r = run("kg", "link", "two fire engines and puppies", "--sense-model", "none")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["span", "entity", "name", "score", "gloss"]
    assert lines[1].startswith("fire engines  n03345487  fire engine")
    d = json.loads(run("kg", "link", "two fire engines and puppies", "--sense-model", "none",
                       "--format", "json").output)
    assert [x["entity_id"] for x in d] == ["n03345487", "n01322604"]
    assert run("kg", "link", "of the", "--sense-model", "none").output.strip() == "nothing linked"


def test_kg_expand_with_vectors():
    r = run("kg", "expand", "a dog", "--sense-model", "none", "--model", "fake:v1", "--mode", "multi",
            "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mode"] == "multi" and d["linked"][0]["entity_id"] == "n02084071"
    assert len(d["vector_weights"]) == len(d["expansions"]) + 1 and d["vector_weights"][0] == 1.0
    assert "dog -> hyponym -> puppy" in [e["path_text"] for e in d["expansions"]]
    r = run("kg", "expand", "a dog", "--sense-model", "none")
    assert "dog -> hyponym -> puppy" in r.output and r.output.startswith("linked 'dog' -> n02084071")


def test_kg_errors_are_one_line():
    r = run("kg", "link", "a dog", "--kg", "/nonexistent/graph")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "no such knowledge graph" in r.output
    r = run("kg", "expand", "a dog", "--mode", "sideways")
    assert r.exit_code == 2


def test_kg_embed_precomputes_a_user_graph(tmp_path):
    (tmp_path / "t.tsv").write_text("a\tr\tb\nb\tr\tc\n")
    assert run("kg", "import", str(tmp_path / "t.tsv"), "-o", str(tmp_path / "kg")).exit_code == 0
    r = run("--quiet", "kg", "embed", "--model", "fake:v1", "--kg", str(tmp_path / "kg"))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("3 entity vectors computed, 3 cached in ")
    r = run("--quiet", "kg", "embed", "--model", "fake:v1", "--kg", str(tmp_path / "kg"))
    assert r.output.startswith("0 entity vectors computed, 3 cached")
