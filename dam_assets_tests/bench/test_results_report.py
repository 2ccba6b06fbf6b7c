"""bench/RESULTS.md is generated: rendering its records again gives the file as committed."""

from __future__ import annotations

from bench.report import RESULTS, load_records, render_results


def test_results_md_is_the_rendering_of_its_records():
    assert RESULTS.read_text() == render_results(load_records()), "run `python -m bench.report` and commit RESULTS.md"
