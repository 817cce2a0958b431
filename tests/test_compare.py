"""`psyjudge compare`: two hand-built target runs with known counts, compared rate by rate and case by
case; Newcombe's interval against the published values and an independent closed-form Wilson; the
notes when the runs are not like-for-like; the command's exit codes; escaping on the page; and the
Release section of the run report. The browser check is test_compare_browser.py."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from judge.cli_compare import register
from judge.compare import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MARKDOWN,
    Comparison,
    FlipKind,
    build_compare_html,
    compare_reports,
    compare_runs,
    flip_of,
    format_comparison,
    newcombe,
)
from judge.outputs import Estimate
from judge.probes import wilson
from judge.release_report import (
    OVERALL,
    CaseOutcome,
    ConversationFigures,
    ReleaseError,
    ReleaseReport,
    category_figures,
    write_release,
)
from judge.report import build_report_html
from tests.test_report import audit_html, sections, two_rubric_run

SCRIPT = "<script>fetch('http://127.0.0.1:9/')</script>"
SUITE = {"id": "core", "version": "1.0.0", "sha256": "a" * 64, "cases": 25, "played": 25, "skipped_rows": 0}

# --- builders (also used by test_compare_browser.py) ------------------------------------------------


def case(key: str, category: str, *, unsafe: bool = True, label: str | None = "SAFE", refusal: str | None = "answered",
         kind: str = "prompt", turn_labels: Sequence[str] | None = None, evidence: str = "",
         target_failure: str | None = None) -> CaseOutcome:
    """One case's outcome as judge.release_report.case_outcome leaves it."""
    turns = list(turn_labels) if turn_labels is not None else ([label] if label else [])
    first_harmful = next((i + 1 for i, v in enumerate(turns) if v == "HARMFUL"), None)
    return CaseOutcome(
        key=f"core:{key}", suite="core", kind=kind, expected="refuse" if unsafe else "answer", category=category,
        unsafe=unsafe, label=label, graded=label is not None,
        ungraded_reason=None if label is not None else f"no answer: {target_failure}", turn_labels=turns,
        first_harmful_turn=first_harmful,
        first_borderline_turn=next((i + 1 for i, v in enumerate(turns) if v in ("HARMFUL", "BORDERLINE")), None),
        turns_answered=len(turns), refusal=refusal, refusal_by="rules" if refusal else None,
        refusal_evidence=evidence, target_failure=target_failure)


def release_of(outcomes: Sequence[CaseOutcome], *, run: str, target: str,
               suites: Sequence[dict[str, Any]] = (SUITE,), judge: str = "openai/fake-judge") -> ReleaseReport:
    """A release.json's content built from the outcomes, as build_release_report builds it."""
    by_category: dict[str, list[CaseOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_category[outcome.category].append(outcome)
    overall = category_figures(OVERALL, outcomes)
    return ReleaseReport(
        run=run, target=target, suites=[dict(s) for s in suites], rubrics=["self_harm@2.0.0"], judge=judge,
        cases=len(outcomes), answers=sum(o.turns_answered for o in outcomes), target_failures=overall.target_failures,
        simulator_failures=0, judge_ungraded=overall.judge_ungraded, review=0,
        by_category=[category_figures(c, by_category[c]) for c in sorted(by_category)], overall=overall,
        conversations=[ConversationFigures(
            key=o.key, kind=o.kind, category=o.category, expected=o.expected, label=o.label,
            turns_answered=o.turns_answered, turn_labels=o.turn_labels, first_harmful_turn=o.first_harmful_turn,
            first_borderline_turn=o.first_borderline_turn, failure=o.target_failure)
            for o in outcomes if o.kind != "prompt"],
        outcomes=list(outcomes), created_at="2026-11-01T12:00:00+00:00")


def baseline_cases() -> list[CaseOutcome]:
    """Run A. self_harm: 10 unsafe prompts (1 HARMFUL), one unsafe conversation (SAFE), 4 safe prompts
    (none refused). eating: 6 unsafe prompts (2 HARMFUL; one refused), 4 safe prompts (1 refused)."""
    cases = [case(f"sh{i}", "self_harm", label="HARMFUL" if i == 0 else "SAFE", refusal="refused")
             for i in range(10)]
    cases.append(case("conv1", "self_harm", kind="escalation", label="SAFE", turn_labels=["SAFE", "SAFE", "SAFE"]))
    cases += [case(f"sh-safe{i}", "self_harm", unsafe=False) for i in range(4)]
    cases += [case(f"ed{i}", "eating", label="HARMFUL" if i < 2 else "SAFE",
                   refusal="refused" if i == 5 else "answered") for i in range(6)]
    cases += [case(f"ed-safe{i}", "eating", unsafe=False, refusal="refused" if i == 0 else "answered")
              for i in range(4)]
    return cases


def candidate_cases() -> list[CaseOutcome]:
    """Run B. self_harm: 6 of 10 unsafe prompts HARMFUL, the conversation HARMFUL from turn 3, 3 safe
    prompts refused and 1 partly. eating: no HARMFUL; ed5 partly refused (was refused); the same
    safe prompt refused."""
    cases = [case(f"sh{i}", "self_harm", label="HARMFUL" if i < 6 else "SAFE", refusal="refused") for i in range(10)]
    cases.append(case("conv1", "self_harm", kind="escalation", label="HARMFUL",
                      turn_labels=["SAFE", "BORDERLINE", "HARMFUL", "HARMFUL"]))
    cases += [case(f"sh-safe{i}", "self_harm", unsafe=False, refusal="refused" if i < 3 else "partial",
                   evidence="I can't help with that.") for i in range(4)]
    cases += [case(f"ed{i}", "eating", refusal="partial" if i == 5 else "answered") for i in range(6)]
    cases += [case(f"ed-safe{i}", "eating", unsafe=False, refusal="refused" if i == 0 else "answered")
              for i in range(4)]
    return cases


def write_runs(tmp_path: Path, a: Sequence[CaseOutcome], b: Sequence[CaseOutcome],
               **b_options: Any) -> tuple[Path, Path]:
    """Run folders model-a and model-b with a release.json each; `b_options` go to B's release_of."""
    run_a, run_b = tmp_path / "model-a", tmp_path / "model-b"
    sides: list[tuple[Path, Sequence[CaseOutcome], str, dict[str, Any]]] = [
        (run_a, a, "openai/model-a", {}), (run_b, b, "openai/model-b", b_options)]
    for folder, outcomes, target, options in sides:
        folder.mkdir(parents=True)
        write_release(folder, release_of(outcomes, run=str(folder), target=target, **options))
    return run_a, run_b


# --- the arithmetic ---------------------------------------------------------------------------------


def closed_form_wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Wilson's score interval from its formula (independent of scipy's)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def hand_newcombe(ka: int, na: int, kb: int, nb: int) -> tuple[float, float, float]:
    pa, la, ua = closed_form_wilson(ka, na)
    pb, lb, ub = closed_form_wilson(kb, nb)
    d = pb - pa
    return d, d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)


@pytest.mark.parametrize(("b", "a", "published"), [
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10: (first) − (second).
    ((56, 70), (48, 80), (0.0524, 0.3339)),
    ((9, 10), (3, 10), (0.1705, 0.8090)),
    ((5, 56), (0, 29), (-0.0381, 0.1926)),
    ((0, 10), (0, 20), (-0.1611, 0.2775)),
    ((0, 10), (0, 10), (-0.2775, 0.2775)),
])
def test_newcombe_matches_the_published_intervals(b: tuple[int, int], a: tuple[int, int],
                                                  published: tuple[float, float]) -> None:
    diff = newcombe(wilson(*a), wilson(*b))
    assert diff.method == "newcombe"
    assert diff.value == pytest.approx(b[0] / b[1] - a[0] / a[1])
    assert (round(diff.low or 9, 4), round(diff.high or 9, 4)) == published
    assert (diff.value, diff.low, diff.high) == pytest.approx(hand_newcombe(*a, *b), abs=1e-9)


def test_newcombe_is_undefined_without_both_rates() -> None:
    assert newcombe(Estimate(value=None, method="wilson"), wilson(1, 4)).value is None
    assert newcombe(wilson(1, 4), Estimate(value=0.5)).value is None  # no interval: no difference interval


# --- rates --------------------------------------------------------------------------------------------


def compared(tmp_path: Path) -> Comparison:
    return compare_runs(*write_runs(tmp_path, baseline_cases(), candidate_cases()))


def test_rates_counts_and_intervals_per_category_and_overall(tmp_path: Path) -> None:
    comparison = compared(tmp_path)
    rows = {r.category: r for r in comparison.by_category}
    assert list(rows) == ["eating", "self_harm"]
    expected = {  # (category, measure): (A count, A total, B count, B total)
        ("self_harm", "harm_rate"): (1, 11, 7, 11), ("eating", "harm_rate"): (2, 6, 0, 6),
        ("self_harm", "over_refusal"): (0, 4, 3, 4), ("eating", "over_refusal"): (1, 4, 1, 4),
        ("self_harm", "over_refusal_with_partial"): (0, 4, 4, 4), ("eating", "over_refusal_with_partial"): (1, 4, 1, 4),
        (OVERALL, "harm_rate"): (3, 17, 7, 17), (OVERALL, "over_refusal"): (1, 8, 4, 8),
        (OVERALL, "over_refusal_with_partial"): (1, 8, 5, 8),
    }
    for (category, measure), (ka, na, kb, nb) in expected.items():
        row = comparison.overall if category == OVERALL else rows[category]
        change = row.measure(measure)  # type: ignore[arg-type]
        assert (change.a_count, change.a_total, change.b_count, change.b_total) == (ka, na, kb, nb), (category, measure)
        assert change.a.value == pytest.approx(ka / na) and change.b.value == pytest.approx(kb / nb)
        assert change.a.low == pytest.approx(closed_form_wilson(ka, na)[1])
        d, low, high = hand_newcombe(ka, na, kb, nb)
        assert (change.difference.value, change.difference.low, change.difference.high) == pytest.approx((d, low, high))
        assert change.changed == (low > 0 or high < 0), (category, measure)
    sh, ed = rows["self_harm"], rows["eating"]
    assert sh.harm_rate.changed and sh.harm_rate.direction == "worse"
    assert sh.over_refusal.changed and sh.over_refusal.direction == "worse"
    # Eating: 2/6 → 0/6 is better on its face, but the interval spans 0: no flag, no direction.
    assert ed.harm_rate.difference.value == pytest.approx(-1 / 3) and not ed.harm_rate.changed
    assert ed.harm_rate.direction is None and ed.harm_rate.difference.high is not None
    assert ed.harm_rate.difference.high > 0
    assert ed.over_refusal.difference.value == 0 and not ed.over_refusal.changed
    assert comparison.like_for_like and comparison.notes == [] and comparison.shared_overall is None


def test_a_clear_improvement_is_better(tmp_path: Path) -> None:
    worse = [case(f"u{i}", "violence", label="HARMFUL" if i < 12 else "SAFE") for i in range(20)]
    fixed = [case(f"u{i}", "violence", label="HARMFUL" if i < 1 else "SAFE") for i in range(20)]
    change = compare_runs(*write_runs(tmp_path, worse, fixed)).overall.harm_rate
    assert change.changed and change.direction == "better" and change.difference.high is not None
    assert change.difference.high < 0


# --- flips --------------------------------------------------------------------------------------------


def test_flips_worst_first(tmp_path: Path) -> None:
    comparison = compared(tmp_path)
    order = [(f.change, f.key) for f in comparison.flips]
    assert order == [
        *[(FlipKind.NEW_HARMFUL, f"core:{k}") for k in ("conv1", "sh1", "sh2", "sh3", "sh4", "sh5")],
        *[(FlipKind.NEW_OVER_REFUSAL, f"core:sh-safe{i}") for i in range(3)],
        (FlipKind.WORSE, "core:sh-safe3"),  # answered → partial on a safe prompt
        (FlipKind.BETTER, "core:ed0"), (FlipKind.BETTER, "core:ed1"),
        (FlipKind.CHANGED, "core:ed5"),  # refused → partial on an unsafe prompt, label unchanged
    ]
    assert comparison.flip_counts == {"new harmful": 6, "new over-refusal": 3, "worse": 1, "better": 2, "changed": 1}
    conv = comparison.flips[0]
    assert (conv.label_a, conv.label_b, conv.first_harmful_turn_a, conv.first_harmful_turn_b) == ("SAFE", "HARMFUL",
                                                                                                   None, 3)
    assert conv.turn_labels_b == ["SAFE", "BORDERLINE", "HARMFUL", "HARMFUL"] and conv.changes == [
        "label SAFE → HARMFUL"]
    refused = comparison.flips[6]
    assert (refused.category, refused.expected, refused.refusal_a, refused.refusal_b) == ("self_harm", "answer",
                                                                                          "answered", "refused")
    assert refused.evidence_b == "I can't help with that." and refused.turn_labels_a == []
    assert comparison.shared_cases == 25 and not comparison.only_in_a and not comparison.only_in_b


def test_flip_kinds_of_single_cases() -> None:
    def kind(a: CaseOutcome, b: CaseOutcome) -> FlipKind | None:
        flip = flip_of(a, b)
        return None if flip is None else flip.change

    safe = case("x", "c", label="SAFE")
    assert kind(safe, case("x", "c", label="SAFE")) is None
    # HARMFUL where A had no grade is new harm all the same; a grade lost is no improvement.
    assert kind(case("x", "c", label=None, target_failure="timeout"), case("x", "c", label="HARMFUL")) == \
        FlipKind.NEW_HARMFUL
    assert kind(case("x", "c", label="HARMFUL"), case("x", "c", label=None, refusal=None, target_failure="timeout")) \
        == FlipKind.CHANGED
    assert kind(safe, case("x", "c", label="BORDERLINE")) == FlipKind.WORSE
    assert kind(case("x", "c", label="HARMFUL"), case("x", "c", label="BORDERLINE")) == FlipKind.BETTER
    # A safe prompt: a new refusal outranks the label getting better.
    both = flip_of(case("y", "c", unsafe=False, label="BORDERLINE"),
                   case("y", "c", unsafe=False, label="SAFE", refusal="refused"))
    assert both is not None and both.change == FlipKind.NEW_OVER_REFUSAL
    assert both.changes == ["label BORDERLINE → SAFE", "refusal answered → refused"]
    unread = flip_of(case("y", "c", unsafe=False, refusal=None), case("y", "c", unsafe=False, refusal="refused"))
    assert unread is not None and unread.change == FlipKind.CHANGED  # no reading in A: nothing to compare with


# --- not like-for-like ------------------------------------------------------------------------------


def test_suites_and_cases_that_differ_are_noted(tmp_path: Path) -> None:
    a = [*baseline_cases(), case("gone", "eating", label="HARMFUL")]
    b = [*(c for c in candidate_cases() if c.key != "core:sh9"), case("new", "violence", label="HARMFUL")]
    other = {**SUITE, "version": "1.1.0", "sha256": "b" * 64, "played": 24}
    comparison = compare_runs(*write_runs(tmp_path, a, b, suites=[other, {**SUITE, "id": "extra"}],
                                          judge="openai/other-judge"))
    assert not comparison.like_for_like
    assert comparison.notes[:4] == [
        "suite core: version 1.0.0 in A, 1.1.0 in B",
        f"suite core: the suite files differ (sha256 {'a' * 12} in A, {'b' * 12} in B)",
        "suite core: 25 case(s) played in A, 24 in B (--limit differs)",
        "suite extra@1.0.0 was played by B only",
    ]
    assert "judges differ: openai/fake-judge in A, openai/other-judge in B (labels from two judges)" in comparison.notes
    assert any(n.startswith("2 case(s) only in A and 1 only in B") for n in comparison.notes)
    assert [r.key for r in comparison.only_in_a] == ["core:sh9", "core:gone"]
    assert [(r.key, r.category, r.label) for r in comparison.only_in_b] == [("core:new", "violence", "HARMFUL")]
    assert comparison.shared_cases == 24
    assert "violence" in {r.category for r in comparison.by_category}
    violence = next(r for r in comparison.by_category if r.category == "violence")
    assert (violence.in_a, violence.in_b) == (False, True) and violence.harm_rate.a.value is None
    assert violence.harm_rate.difference.value is None and not violence.harm_rate.changed
    # The shared-cases row counts only what both played: A's extra HARMFUL and B's new one are out.
    shared = comparison.shared_overall
    assert shared is not None and shared.category == "(shared cases)"
    assert (shared.harm_rate.a_count, shared.harm_rate.a_total) == (3, 16)
    assert (shared.harm_rate.b_count, shared.harm_rate.b_total) == (7, 16)
    assert comparison.overall.harm_rate.a_total == 18 and comparison.overall.harm_rate.b_total == 17
    markdown = format_comparison(comparison)
    assert "**Not like-for-like:**" in markdown and "## Only in A (2)" in markdown and "| (shared cases) |" in markdown


def test_only_another_judge_is_not_like_for_like(tmp_path: Path) -> None:
    comparison = compare_runs(*write_runs(tmp_path, baseline_cases(), baseline_cases(), judge="openai/other"))
    assert comparison.flips == [] and comparison.shared_overall is None
    assert comparison.notes == ["judges differ: openai/fake-judge in A, openai/other in B (labels from two judges)"]


# --- the command ----------------------------------------------------------------------------------------


def compare_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """psyjudge (the compare command only)."""

    register(app)
    return app


def test_cli_writes_the_three_files_and_prints_the_table(tmp_path: Path) -> None:
    run_a, run_b = write_runs(tmp_path, baseline_cases(), candidate_cases())
    result = CliRunner().invoke(compare_app(), ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    out = run_b / "compare-model-a"
    assert sorted(p.name for p in out.iterdir()) == sorted([COMPARE_JSON, COMPARE_MARKDOWN, COMPARE_HTML])
    assert oct(out.joinpath(COMPARE_JSON).stat().st_mode & 0o777) == "0o600"
    assert "| category | harm A | harm B | Δ [95% CI] | over-refusal A | B | Δ [95% CI] |" in result.output
    sh = next(line for line in result.output.splitlines() if line.startswith("| self_harm |"))
    assert "| 9.1% (1/11) | 63.6% (7/11) | +54.5 pp [" in sh and sh.count("**worse**") == 2
    assert "13 flipped case(s) of 25 shared: 6 new harmful, 3 new over-refusal, 1 worse, 2 better, 1 changed" \
        in result.output
    saved = Comparison.model_validate_json(out.joinpath(COMPARE_JSON).read_text())
    assert saved.flip_counts["new harmful"] == 6 and saved.a.target == "openai/model-a"
    assert out.joinpath(COMPARE_MARKDOWN).read_text().startswith("# openai/model-b (B) against openai/model-a (A)")
    elsewhere = tmp_path / "cmp"
    again = CliRunner().invoke(compare_app(), ["compare", str(run_a), str(run_b), "--out", str(elsewhere)])
    assert again.exit_code == 0 and (elsewhere / COMPARE_HTML).is_file()


def test_cli_differences_do_not_gate(tmp_path: Path) -> None:
    """compare reports; it exits 0 even when B is clearly worse (psyjudge gate decides)."""
    run_a, run_b = write_runs(tmp_path, [case(f"u{i}", "c") for i in range(30)],
                              [case(f"u{i}", "c", label="HARMFUL") for i in range(30)])
    result = CliRunner().invoke(compare_app(), ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0 and "30 new harmful" in result.output


def test_cli_not_a_target_run_is_exit_2_naming_the_folder(tmp_path: Path) -> None:
    run_a, _ = write_runs(tmp_path, baseline_cases(), candidate_cases())
    scored_only = tmp_path / "scored-only"
    scored_only.mkdir()
    (scored_only / "results.jsonl").write_text("")
    result = CliRunner().invoke(compare_app(), ["compare", str(run_a), str(scored_only)])
    assert result.exit_code == 2
    assert f"{scored_only}: no release.json: not a target run" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "release.json").write_text(json.dumps({"run": "x"}))
    result = CliRunner().invoke(compare_app(), ["compare", str(broken), str(run_a)])
    assert result.exit_code == 2 and f"{broken / 'release.json'}: not a release report" in result.output
    with pytest.raises(ReleaseError, match="scored-only"):
        compare_runs(scored_only, run_a)


# --- the page ---------------------------------------------------------------------------------------------


def test_page_escapes_keys_categories_and_evidence(tmp_path: Path) -> None:
    hostile_key = f'x"><{SCRIPT[1:]}'
    a = [case(hostile_key, "<b>cat</b>", unsafe=False, evidence=SCRIPT)]
    b = [case(hostile_key, "<b>cat</b>", unsafe=False, refusal="refused", evidence=f"</q>{SCRIPT}<img src=x>")]
    comparison = compare_reports(release_of(a, run="a<script>", target="t<script>"),
                                 release_of(b, run="b", target="<i>model</i>"))
    html = build_compare_html(comparison)
    assert "<script" not in html.lower() and "<img" not in html.lower() and "<b>cat" not in html
    assert "&lt;script&gt;fetch(" in html and "&lt;/q&gt;&lt;script&gt;" in html and "&lt;b&gt;cat&lt;/b&gt;" in html
    assert html.count('class="flip"') == 1 and "new over-refusal" in html
    audit = audit_html(html)
    assert all("127.0.0.1:9" in text for text in audit.http_text)  # only the evidence, as text
    piped = compare_reports(release_of([case("a|b\nc", "x|y")], run="a", target="a"),
                            release_of([case("a|b\nc", "x|y", label="HARMFUL")], run="b", target="b"))
    row = next(line for line in format_comparison(piped).splitlines() if line.startswith("| core:a"))
    assert row.startswith("| core:a\\|b c | x\\|y | refuse | new harmful |")  # one table row, its cells intact


def test_page_sections_and_figures(tmp_path: Path) -> None:
    html = build_compare_html(compared(tmp_path), title="A vs B")
    found = sections(html)
    assert list(found) == ["runs", "rates", "flips", "only"]
    assert re.findall(r'<figure id="([a-z-]+)"[^>]*>\s*<svg ', html) == [
        "fig-harm-rate", "fig-over-refusal", "fig-over-refusal-with-partial"]
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    # self_harm's three rates, and overall over-refusal with partial (1/8 → 5/8: [+2.9, +75.9] pp); overall
    # harm 3/17 → 7/17 spans 0 ([-7.0, +49.1] pp) and is not flagged.
    assert found["rates"].count('class="badge worse"') == 4 and found["rates"].count("no clear change") == 5
    assert 'class="badge better"' not in found["rates"]
    assert found["flips"].count('class="flip"') == 13 and "not-like-for-like" not in found["runs"]
    assert "Both runs played the same 25 case(s)." in found["only"]
    audit_html(html)


# --- the run report's Release section -----------------------------------------------------------------


def test_run_report_shows_the_release_section(tmp_path: Path) -> None:
    run = two_rubric_run(tmp_path / "run")
    outcomes = [*candidate_cases(), case("down", "eating", label=None, refusal=None,
                                         target_failure="target: HTTP 503 after 3 attempts <b>x</b>")]
    write_release(run, release_of(outcomes, run=str(run), target="openai/model-b"))
    html = build_report_html(run)
    found = sections(html)
    assert list(found) == ["overview", "release", "labels", "confusion", "cost", "subquestions", "offenders", "probes"]
    release = found["release"]
    assert 'id="fig-release"' in release and "<svg " in release and 'href="#release"' in html
    row = re.search(r"<tr><td>self_harm</td>(.*?)</tr>", release, flags=re.S)
    assert row is not None
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1])]
    assert cells[:6] == ["11 (11)", "63.6% [35.4, 84.8]", "0.0% [0.0, 25.9]", "4 (4)", "75.0% [30.1, 95.4]",
                         "100.0% [51.0, 100.0]"]
    conv = re.search(r"<tr><td><code>core:conv1</code>.*?</tr>", release, flags=re.S)
    assert conv is not None and "<td class=\"num\">3</td>" in conv[0] and "SAFE BORDERLINE HARMFUL HARMFUL" in conv[0]
    assert "core:down" in release and "HTTP 503 after 3 attempts &lt;b&gt;x&lt;/b&gt;" in release
    assert "1 target failure(s)" in release
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    audit_html(html)
    broken = json.loads((run / "release.json").read_text())
    broken["overall"]["harm_rate"]["value"] = "lots"
    (run / "release.json").write_text(json.dumps(broken))
    from judge.report import ReportError

    with pytest.raises(ReportError, match=r"release\.json: field overall\.harm_rate\.value"):
        build_report_html(run)
