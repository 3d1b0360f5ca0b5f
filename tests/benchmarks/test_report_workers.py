"""RESULTS.md carries the 1-vs-N workers section of RESULTS_workers.md, and a regenerated RESULTS.md keeps it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import WORKERS_BEGIN, WORKERS_END, WORKERS_RESULTS, workers_section

REPO = Path(__file__).resolve().parents[2]


def test_the_marked_part_is_included_verbatim_and_nothing_without_markers(tmp_path):
    path = tmp_path / "RESULTS_workers.md"
    assert workers_section(path) == []  # no file: no section
    path.write_text("# preamble, not copied\n")
    assert workers_section(path) == []
    path.write_text(f"# title\nlocal notes\n{WORKERS_BEGIN}\n## Calls per machine\n\n| a | b |\n{WORKERS_END}\nmore\n")
    assert workers_section(path) == ["## Calls per machine", "", "| a | b |", ""]


def test_the_current_results_md_has_the_workers_section_as_the_generator_would_write_it():
    lines = workers_section(WORKERS_RESULTS)
    assert lines and lines[0].startswith("## "), "RESULTS_workers.md lost its RESULTS.md section markers"
    results = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert "\n".join(lines).strip() in results
