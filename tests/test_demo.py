"""`kgclip demo` (the README's main job): real photos, the real `lite` model, golden output.

Scores, timings and lower ranks can move with float noise between machines, so
the golden file pins the stable skeleton: every heading and command, the
linked entity, and each query's top hit. Regenerate it after an intended
change with ``KGCLIP_UPDATE_GOLDEN=1 pytest tests/test_demo.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

GOLDEN = Path(__file__).parent / "golden" / "demo.txt"
HIT = re.compile(r"^\s+(\d+)\s+-?\d+\.\d+\s+(\S+)(.*)$")


def normalise(out: str, workdir: Path) -> str:
    """Keep the stable skeleton of the demo's output (see the module docstring)."""
    keep = []
    for line in out.replace(str(workdir), "<DIR>").splitlines():
        m = HIT.match(line)
        if m:
            if m.group(1) == "1":
                keep.append(f"  1  <score>  {Path(m.group(2)).name}")
            continue
        if line.startswith("indexed ") or line.startswith("       ") or line.startswith("  ... "):
            continue  # build timing; per-hit explanation lines; expansion overflow
        if re.match(r"^  \S.* \(w=\d\.\d\d\)$", line):
            continue  # expansion lines: the KG policy's weights may be tuned
        line = re.sub(r"expanded with \d+ concepts?", "expanded with <n> concepts", line)
        keep.append(line.rstrip())
    return "\n".join(keep).strip() + "\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    runner = CliRunner()
    r = runner.invoke(cli.main, ["-q", "demo", "--dir", str(workdir / "d"), "--device", "cpu"],
                      catch_exceptions=False)
    return r, workdir / "d"


def test_demo_runs_and_finds_the_right_photos(demo_run):
    r, d = demo_run
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert (d / "photos" / "chelsea.jpg").is_file() and (d / "index" / "index.json").is_file()
    blocks = dict(re.findall(r"\$ kgclip search \S+ '([^']+)' -k 3\n\s+1\s+\S+\s+(\S+)", out))
    assert Path(blocks["a cat"]).name == "chelsea.jpg"
    assert Path(blocks["a cup of coffee"]).name == "coffee.jpg"
    assert Path(blocks["a motorbike"]).name == "motorcycle.jpg"
    assert "linked:" in out and "-> hyponym ->" in out and "concept: " in out
    assert "Traceback" not in out


def test_demo_golden(demo_run):
    r, d = demo_run
    got = normalise(r.stdout, d)
    if os.environ.get("KGCLIP_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def test_demo_rerun_reuses_the_index(demo_run):
    r, d = demo_run
    r2 = CliRunner().invoke(cli.main, ["-q", "demo", "--dir", str(d), "--device", "cpu"], catch_exceptions=False)
    assert r2.exit_code == 0
    assert re.search(r"indexed \d+ photos \(0 new, \d+ unchanged", r2.stdout), r2.stdout.splitlines()[:3]
    assert normalise(r2.stdout, d).splitlines()[2:] == normalise(r.stdout, d).splitlines()[2:]


def test_demo_images_are_real_photos(tmp_path):
    from PIL import Image

    from indexer.demo import demo_images

    got = demo_images(tmp_path)
    names = {p.stem for p, _ in got}
    assert {"chelsea", "coffee", "rocket", "astronaut", "motorcycle", "horse"} <= names
    for p, what in got:
        with Image.open(p) as im:
            assert im.mode == "RGB" and min(im.size) >= 100 and what
    assert demo_images(tmp_path) == got  # idempotent
