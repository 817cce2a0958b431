"""The comparison page, and the run report's Release section, in a real headless browser (Debian's
chromium driven by playwright, as in test_report_browser.py): every section and figure renders with
a box of its own, no console error is logged, and nothing but the document is requested. A case key
and refusal evidence with live markup stay text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from judge.compare import COMPARE_HTML, COMPARE_JSON, MEASURES, Comparison
from judge.release_report import write_release
from judge.report import write_report
from tests.test_compare import baseline_cases, candidate_cases, case, compare_app, release_of, write_runs
from tests.test_report import two_rubric_run
from tests.test_report_browser import IMG, SCRIPT, chromium, keep_screenshot, left_the_page, visit

SECTIONS = {"runs": "Runs", "rates": "Rates", "flips": "Flipped cases", "only": "Cases in one run only"}
FIGURES = ["fig-harm-rate", "fig-over-refusal", "fig-over-refusal-with-partial"]


def check_figures(page: Any, figures: list[str]) -> None:
    for figure in figures:
        svg = page.locator(f"figure#{figure} > svg")
        assert svg.count() == 1, figure
        box = svg.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50, (figure, box)
        assert svg.locator("text").count() > 3, figure  # axis labels rendered as text


def test_compare_page_renders_offline(tmp_path: Path) -> None:
    hostile = case(f"k{IMG}", "eating", unsafe=False, evidence=SCRIPT)
    refused = case(f"k{IMG}", "eating", unsafe=False, refusal="refused", evidence=f"{SCRIPT} I can't help.")
    run_a, run_b = write_runs(tmp_path, [*baseline_cases(), hostile], [*candidate_cases(), refused])
    result = CliRunner().invoke(compare_app(), ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    page_path = run_b / "compare-model-a" / COMPARE_HTML

    with chromium(tmp_path / "profile") as browser:
        seen = visit(browser, page_path)
        page = seen.page
        try:
            title = "psyjudge compare: openai/model-b against openai/model-a"
            assert page.title() == title and page.locator("h1").inner_text() == title
            for section, heading in SECTIONS.items():
                h2 = page.locator(f"section#{section} > h2")
                assert h2.is_visible() and h2.inner_text() == heading, section
            for h3 in ("Harm rate", "Over-refusal", "Over-refusal with partial"):
                assert page.locator("#rates h3", has_text=h3).first.is_visible()
            check_figures(page, FIGURES)
            assert page.locator("svg").count() == len(FIGURES)
            assert page.locator("#flips tr.flip").count() == 14
            first = page.locator("#flips tr.flip").first.inner_text()
            assert "core:conv1" in first and "new harmful" in first and "SAFE → HARMFUL" in first
            assert page.locator("#flips", has_text=f"core:k{IMG}").count() == 1  # the key, as text
            assert page.locator("#flips q", has_text=SCRIPT).count() == 2
            assert page.evaluate("() => [document.images.length, document.scripts.length]") == [0, 0]
            saved = Comparison.model_validate_json(page_path.with_name(COMPARE_JSON).read_text())
            rows = [*saved.by_category, saved.overall]
            worse = sum(r.measure(m).direction == "worse" for r in rows for m in MEASURES)
            assert worse >= 4 and page.locator("#rates .badge.worse").count() == worse
            keep_screenshot(page, "compare.png")
        finally:
            page.close()
    assert seen.errors == []
    assert left_the_page(seen, page_path) == []
    assert seen.requests == [page_path.resolve().as_uri()]


def test_run_report_release_section_renders_offline(tmp_path: Path) -> None:
    run = two_rubric_run(tmp_path / "run")
    outcomes = [*candidate_cases(), case("down", "eating", label=None, refusal=None, target_failure="HTTP 503")]
    write_release(run, release_of(outcomes, run=str(run), target="openai/model-b"))
    report = write_report(run, title="release check")

    with chromium(tmp_path / "profile") as browser:
        seen = visit(browser, report)
        page = seen.page
        try:
            h2 = page.locator("section#release > h2")
            assert h2.is_visible() and h2.inner_text() == "Release"
            check_figures(page, ["fig-release"])
            assert "core:conv1" in page.locator("#release-conversations").inner_text()
            assert "HTTP 503" in page.locator("#release-failures").inner_text()
            keep_screenshot(page, "report-release.png")
        finally:
            page.close()
    assert seen.errors == []
    assert left_the_page(seen, report) == []
