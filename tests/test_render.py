"""retrieval/render.py: the CLI's text for index info, KG links and plans (results: test_search.py)."""

from __future__ import annotations

import json

from retrieval.render import FORMATS, index_info_rows, links_table, plan_dict, plan_table, render_index_info
from retrieval.types import Expansion, QueryPlan


def test_index_info_matches_kgclip_info(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cli import main
    from indexer import build_index, index_info

    (tmp_path / "imgs").mkdir()
    for n, rgb in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (20 + n, 20), rgb).save(tmp_path / "imgs" / f"{n}.png")
    build_index([str(tmp_path / "imgs")], str(tmp_path / "idx"), model="fake:v1", text_model=None, progress=False,
                quiet=True, workers=0)
    d = index_info(str(tmp_path / "idx"))
    out = CliRunner().invoke(main, ["info", str(tmp_path / "idx")])
    assert out.exit_code == 0, out.output
    assert render_index_info(d) == out.output.rstrip("\n")
    assert dict(index_info_rows(d))["text model"] == "none (no caption index)"
    assert json.loads(render_index_info(d, "json"))["path"] == d["path"]


def test_links_and_plans():
    assert links_table([]) == "nothing linked"
    link = {"span": "dog", "entity_id": "n02084071", "name": "dog", "score": 0.91, "gloss": "a domesticated canid"}
    table = links_table([link]).splitlines()
    assert table[0].split() == ["span", "entity", "name", "score", "gloss"] and "0.91" in table[1]
    plan = QueryPlan("a dog", "mix", [link], [Expansion("n1", "puppy", "hyponym", 0.4, ["dog", "hyponym", "puppy"])])
    text = plan_table(plan, [1.0, 0.4])
    assert "linked 'dog' -> n02084071 dog (score 0.91)" in text and "0.400  dog -> hyponym -> puppy  [n1]" in text
    assert text.endswith("query vectors: 2 (mode mix); weights 1.000 0.400")
    assert plan_dict(plan, [1.0, 0.4])["expansions"][0]["path_text"] == "dog -> hyponym -> puppy"
    assert "nothing linked" in plan_table(QueryPlan("xyz"))
    assert FORMATS == ("table", "json", "jsonl", "paths")
