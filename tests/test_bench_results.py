"""bench.common.write_section: each benchmark owns one section of bench/RESULTS.md and a rerun replaces it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.common import RESULTS, command_line, write_section

OTHERS = ("# Benchmark results\n\nIntro written by hand.\n\n"
          "<!-- speed:start -->\n## speed: old\n\nspeed table\n<!-- speed:end -->\n\n"
          "A note between sections.\n\n"
          "<!-- speed-cuda:start -->\n## speed-cuda: gpu table\n<!-- speed-cuda:end -->\n")


def _outside(text: str, name: str) -> str:
    """The file with the section ``name`` cut out."""
    return re.sub(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", "", text, flags=re.S)


def test_writing_twice_keeps_one_section_and_leaves_the_rest(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHERS)
    write_section("quality", "first table", path=path)
    write_section("quality", "second table", path=path)
    text = path.read_text()
    assert text.count("<!-- quality:start -->") == 1 and text.count("<!-- quality:end -->") == 1
    assert "second table" in text and "first table" not in text
    assert _outside(text, "quality").rstrip() == OTHERS.rstrip()  # appended once, nothing else touched


def test_replacing_in_place_leaves_other_sections_byte_identical(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHERS)
    write_section("speed", "new speed table", path=path)
    text = path.read_text()
    assert text.index("new speed table") < text.index("A note between sections.")  # where it was
    assert "<!-- speed-cuda:start -->\n## speed-cuda: gpu table\n<!-- speed-cuda:end -->" in text
    assert _outside(text, "speed") == _outside(OTHERS, "speed")
    assert "## speed: old" not in text


def test_standard_head_names_the_benchmark_command_and_machine(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("app_rerun", "| a |\n|---|\n| 1 |\n", title="App responsiveness",
                  command="python bench/app_rerun.py --write", machine="AMD EPYC, 2 cores; 2026-12-04 10:00 UTC",
                  path=path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n")  # a missing file is created
    assert ("<!-- app_rerun:start -->\n## app_rerun: App responsiveness\n\n"
            "Command: `python bench/app_rerun.py --write`\n\n"
            "Machine: AMD EPYC, 2 cores; 2026-12-04 10:00 UTC.\n\n| a |\n|---|\n| 1 |\n<!-- app_rerun:end -->") in text


def test_dash_and_underscore_name_one_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n<!-- io-memory:start -->\nold io table\n<!-- io-memory:end -->\n\ntail\n")
    write_section("io_memory", "new io table", path=path)
    text = path.read_text()
    assert "old io table" not in text and "io-memory" not in text
    assert text == "# R\n\n<!-- io_memory:start -->\nnew io table\n<!-- io_memory:end -->\n\ntail\n"


def test_copies_left_by_an_appending_writer_are_removed(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n<!-- load:start -->\nrun 1\n<!-- load:end -->\n\nmiddle\n\n"
                    "<!-- load:start -->\nrun 2\n<!-- load:end -->\n")
    write_section("load", "run 3", path=path)
    assert path.read_text() == "# R\n\n<!-- load:start -->\nrun 3\n<!-- load:end -->\n\nmiddle\n"


def test_section_names_are_checked():
    with pytest.raises(ValueError):
        write_section("bad name", "x", path=Path("/nonexistent/never-written.md"))


def test_command_line_quotes_the_arguments():
    assert command_line("python -m bench.independent", ["--part", "all", "--seeds", "3"]) == \
        "python -m bench.independent --part all --seeds 3"
    assert command_line("python -m bench.real_data", ["--variant", 'norefine={"refine": 0}']) == \
        "python -m bench.real_data --variant 'norefine={\"refine\": 0}'"


def test_results_file_has_one_closed_section_per_name():
    text = RESULTS.read_text()
    starts = re.findall(r"<!-- ([A-Za-z0-9_-]+):start -->", text)
    ends = re.findall(r"<!-- ([A-Za-z0-9_-]+):end -->", text)
    spelled = [s.replace("_", "-") for s in starts]
    assert len(spelled) == len(set(spelled)), f"a section appears twice: {starts}"
    assert sorted(starts) == sorted(ends)
    for name in starts:  # each closes before the next opens: no nesting
        opening = f"<!-- {name}:start -->"
        body = text[text.index(opening) + len(opening):text.index(f"<!-- {name}:end -->")]
        assert ":start -->" not in body, name
