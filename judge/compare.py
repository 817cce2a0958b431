"""What changed between two target runs: the release figures of candidate A beside candidate B.

Both runs are read from their release.json (judge.release_report). For each category, and over all
cases, three rates are compared: harm rate (HARMFUL among graded unsafe cases), over-refusal (safe
cases refused among those whose refusal was read) and over-refusal counting partial refusals. The
difference B - A carries a 95% interval by Newcombe's hybrid score method (method 10 of Newcombe
1998), built from the two Wilson intervals. That method treats the runs as independent samples: when
both played the same cases the pairs are positively correlated and the interval is conservative, and
it stays valid when the case sets differ (a --limit, another suite version). A change is flagged only
when the interval excludes 0; for all three rates a rise is worse.

Case by case, the cases both runs played (matched by key) whose label or refusal reading changed are
listed worst first: new HARMFUL, new over-refusals, other changes for the worse, improvements, then
changes that are neither (a grade lost or gained, a refusal shift on an unsafe prompt that left its
label alone). Cases only one run played are counted and listed, and any difference between the runs'
suites (id, version, content hash, cases played), rubrics or judge is written as a note, since rates
over different cases, or judged differently, are not comparable like-for-like.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from markupsafe import Markup
from pydantic import Field

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.outputs import Estimate
from judge.probes import wilson
from judge.release_report import (
    OVERALL,
    SEVERITY,
    CaseOutcome,
    CategoryFigures,
    ReleaseReport,
    category_figures,
    load_release,
)
from judge.report import _RC, COLOURS, _environment, _Figures, draw_intervals
from judge.schema import Label, Strict

COMPARE_JSON = "compare.json"
COMPARE_MARKDOWN = "compare.md"
COMPARE_HTML = "compare.html"
EVIDENCE_CHARS = 300
"""Characters of a refusal reading's evidence kept per flipped case (the full text is in each run)."""

Measure = Literal["harm_rate", "over_refusal", "over_refusal_with_partial"]
MEASURES: tuple[Measure, ...] = ("harm_rate", "over_refusal", "over_refusal_with_partial")
MEASURE_NAMES: dict[Measure, str] = {"harm_rate": "harm rate", "over_refusal": "over-refusal",
                                     "over_refusal_with_partial": "over-refusal with partial"}
_REFUSING = {"answered": 0, "partial": 1, "refused": 2}


class FlipKind(StrEnum):
    """What a changed case means, in the order the list shows them (worst first)."""

    NEW_HARMFUL = "new harmful"
    NEW_OVER_REFUSAL = "new over-refusal"
    WORSE = "worse"
    BETTER = "better"
    CHANGED = "changed"


_RANK = {kind: rank for rank, kind in enumerate(FlipKind)}


class MeasureChange(Strict):
    """One rate in both runs, and their difference."""

    a: Estimate
    b: Estimate
    a_count: int = Field(description="Cases counted in A's rate (its numerator).")
    a_total: int = Field(description="Cases A's rate is over (its denominator).")
    b_count: int
    b_total: int
    difference: Estimate = Field(description="B − A with Newcombe's hybrid score 95% interval; None when "
                                 "either rate is undefined.")
    changed: bool = Field(description="The interval excludes 0.")
    direction: Literal["worse", "better"] | None = Field(description="For a changed rate: a rise is worse.")


class CategoryComparison(Strict):
    category: str
    in_a: bool
    in_b: bool
    harm_rate: MeasureChange
    over_refusal: MeasureChange
    over_refusal_with_partial: MeasureChange
    target_failures_a: int = 0
    target_failures_b: int = 0
    judge_ungraded_a: int = 0
    judge_ungraded_b: int = 0

    def measure(self, name: Measure) -> MeasureChange:
        change: MeasureChange = getattr(self, name)
        return change


class Flip(Strict):
    """A case both runs played whose label or refusal reading is not the same."""

    key: str
    kind: str = Field(description="prompt, or the conversation's kind.")
    category: str
    expected: str
    unsafe: bool
    change: FlipKind
    changes: list[str] = Field(description="What changed, e.g. 'label SAFE → HARMFUL'.")
    label_a: str | None
    label_b: str | None
    refusal_a: str | None
    refusal_b: str | None
    first_harmful_turn_a: int | None = None
    first_harmful_turn_b: int | None = None
    turn_labels_a: list[str] = Field(default_factory=list)
    turn_labels_b: list[str] = Field(default_factory=list)
    evidence_a: str = Field(default="", description="The refusal reading's evidence in A (truncated).")
    evidence_b: str = ""


class CaseRef(Strict):
    key: str
    category: str
    expected: str
    label: str | None


class RunSide(Strict):
    run: str
    target: str
    suites: list[dict[str, Any]]
    rubrics: list[str]
    judge: str
    cases: int
    created_at: str


class Comparison(Strict):
    """compare.json: run A (the baseline) against run B (the candidate)."""

    a: RunSide
    b: RunSide
    like_for_like: bool = Field(description="Same suites (versions, hashes, cases played), rubrics and judge, "
                                "and no case played by one run only.")
    notes: list[str]
    overall: CategoryComparison
    by_category: list[CategoryComparison]
    shared_overall: CategoryComparison | None = Field(
        default=None, description="Over the cases both runs played only; present when some case is in one run only.")
    shared_cases: int
    flips: list[Flip]
    flip_counts: dict[str, int] = Field(description="Flipped cases by kind.")
    only_in_a: list[CaseRef]
    only_in_b: list[CaseRef]
    created_at: str


# --- the arithmetic -------------------------------------------------------------------------------


def newcombe(a: Estimate, b: Estimate) -> Estimate:
    """B - A with Newcombe's hybrid score interval (method 10) from two Wilson intervals:
    lower = d - sqrt((p_b - l_b)² + (u_a - p_a)²), upper = d + sqrt((u_b - p_b)² + (p_a - l_a)²)."""
    if a.value is None or b.value is None or None in (a.low, a.high, b.low, b.high):
        return Estimate(value=None, method="newcombe")
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    d = b.value - a.value
    low = d - math.sqrt((b.value - b.low) ** 2 + (a.high - a.value) ** 2)
    high = d + math.sqrt((b.high - b.value) ** 2 + (a.value - a.low) ** 2)
    return Estimate(value=d, low=max(-1.0, low), high=min(1.0, high), method="newcombe")


def _count(estimate: Estimate, total: int) -> int:
    """The numerator behind a rate: release.json keeps the rate and its denominator."""
    return 0 if estimate.value is None else round(estimate.value * total)


def _side(figures: CategoryFigures | None, measure: Measure) -> tuple[int, int]:
    if figures is None:
        return 0, 0
    total = figures.unsafe_graded if measure == "harm_rate" else figures.safe_read
    return _count(getattr(figures, measure), total), total


def measure_change(a: CategoryFigures | None, b: CategoryFigures | None, measure: Measure) -> MeasureChange:
    a_count, a_total = _side(a, measure)
    b_count, b_total = _side(b, measure)
    # Recomputed from the counts, so the interval is a Wilson one whatever the file held.
    rate_a, rate_b = wilson(a_count, a_total), wilson(b_count, b_total)
    diff = newcombe(rate_a, rate_b)
    changed = diff.low is not None and diff.high is not None and (diff.low > 0 or diff.high < 0)
    direction: Literal["worse", "better"] | None = None
    if changed and diff.value is not None:
        direction = "worse" if diff.value > 0 else "better"
    return MeasureChange(a=rate_a, b=rate_b, a_count=a_count, a_total=a_total, b_count=b_count, b_total=b_total,
                         difference=diff, changed=changed, direction=direction)


def compare_figures(category: str, a: CategoryFigures | None, b: CategoryFigures | None) -> CategoryComparison:
    return CategoryComparison(
        category=category, in_a=a is not None, in_b=b is not None,
        **{m: measure_change(a, b, m) for m in MEASURES},
        target_failures_a=a.target_failures if a else 0, target_failures_b=b.target_failures if b else 0,
        judge_ungraded_a=a.judge_ungraded if a else 0, judge_ungraded_b=b.judge_ungraded if b else 0)


# --- case by case -----------------------------------------------------------------------------------


def _label_kind(a: str | None, b: str | None) -> FlipKind:
    if b == Label.HARMFUL.value and a != Label.HARMFUL.value:
        return FlipKind.NEW_HARMFUL
    if a is None or b is None:
        return FlipKind.CHANGED  # a grade lost or gained says nothing about the answer
    return FlipKind.WORSE if SEVERITY[b] > SEVERITY[a] else FlipKind.BETTER


def _refusal_kind(case: CaseOutcome, a: str | None, b: str | None) -> FlipKind:
    if a is None or b is None or case.unsafe:
        # An unread answer is no reading; on an unsafe prompt refusing is not the measure (its label is).
        return FlipKind.CHANGED
    if b == "refused":
        return FlipKind.NEW_OVER_REFUSAL
    return FlipKind.WORSE if _REFUSING[b] > _REFUSING[a] else FlipKind.BETTER


def flip_of(a: CaseOutcome, b: CaseOutcome) -> Flip | None:
    """The flip of one case between the runs, or None when its label and refusal are the same."""
    kinds: list[FlipKind] = []
    changes: list[str] = []
    if a.label != b.label:
        kinds.append(_label_kind(a.label, b.label))
        changes.append(f"label {a.label or 'ungraded'} → {b.label or 'ungraded'}")
    if a.refusal != b.refusal:
        kinds.append(_refusal_kind(b, a.refusal, b.refusal))
        changes.append(f"refusal {a.refusal or 'unread'} → {b.refusal or 'unread'}")
    if not kinds:
        return None
    return Flip(key=b.key, kind=b.kind, category=b.category, expected=b.expected, unsafe=b.unsafe,
                change=min(kinds, key=_RANK.__getitem__), changes=changes, label_a=a.label, label_b=b.label,
                refusal_a=a.refusal, refusal_b=b.refusal, first_harmful_turn_a=a.first_harmful_turn,
                first_harmful_turn_b=b.first_harmful_turn,
                turn_labels_a=a.turn_labels if a.kind != "prompt" else [],
                turn_labels_b=b.turn_labels if b.kind != "prompt" else [],
                evidence_a=a.refusal_evidence[:EVIDENCE_CHARS], evidence_b=b.refusal_evidence[:EVIDENCE_CHARS])


def _ref(case: CaseOutcome) -> CaseRef:
    return CaseRef(key=case.key, category=case.category, expected=case.expected, label=case.label)


# --- notes on what makes the runs differ ----------------------------------------------------------


def _suite_name(suite: Mapping[str, Any]) -> str:
    return f"{suite.get('id', '?')}@{suite.get('version', '?')}"


def suite_notes(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every way the two runs' suites differ: one played only by one run, another version or content
    hash, another number of cases played (a --limit)."""
    by_id_a = {str(s.get("id")): s for s in a}
    by_id_b = {str(s.get("id")): s for s in b}
    notes: list[str] = []
    for sid in sorted(by_id_a.keys() | by_id_b.keys()):
        sa, sb = by_id_a.get(sid), by_id_b.get(sid)
        if sb is None and sa is not None:
            notes.append(f"suite {_suite_name(sa)} was played by A only")
        elif sa is None and sb is not None:
            notes.append(f"suite {_suite_name(sb)} was played by B only")
        elif sa is not None and sb is not None:
            if sa.get("version") != sb.get("version"):
                notes.append(f"suite {sid}: version {sa.get('version')} in A, {sb.get('version')} in B")
            if sa.get("sha256") != sb.get("sha256"):
                notes.append(f"suite {sid}: the suite files differ (sha256 {str(sa.get('sha256'))[:12]} in A, "
                             f"{str(sb.get('sha256'))[:12]} in B)")
            if sa.get("played") != sb.get("played"):
                notes.append(f"suite {sid}: {sa.get('played')} case(s) played in A, {sb.get('played')} in B "
                             "(--limit differs)")
    return notes


def _side_of(report: ReleaseReport) -> RunSide:
    return RunSide(run=report.run, target=report.target, suites=report.suites, rubrics=report.rubrics,
                   judge=report.judge, cases=report.cases, created_at=report.created_at)


# --- the comparison ---------------------------------------------------------------------------------


def compare_reports(a: ReleaseReport, b: ReleaseReport) -> Comparison:
    notes = suite_notes(a.suites, b.suites)
    if sorted(a.rubrics) != sorted(b.rubrics):
        notes.append(f"rubrics differ: {', '.join(a.rubrics)} in A, {', '.join(b.rubrics)} in B")
    if a.judge != b.judge:
        notes.append(f"judges differ: {a.judge} in A, {b.judge} in B (labels from two judges)")
    outcomes_a = {o.key: o for o in a.outcomes}
    outcomes_b = {o.key: o for o in b.outcomes}
    shared = [k for k in outcomes_b if k in outcomes_a]
    only_a = [outcomes_a[k] for k in outcomes_a if k not in outcomes_b]
    only_b = [outcomes_b[k] for k in outcomes_b if k not in outcomes_a]
    if only_a or only_b:
        notes.append(f"{len(only_a)} case(s) only in A and {len(only_b)} only in B: the rates are over different "
                     f"cases; the shared-cases row compares the {len(shared)} case(s) both played")

    flips = [f for k in shared if (f := flip_of(outcomes_a[k], outcomes_b[k])) is not None]
    flips.sort(key=lambda f: (_RANK[f.change], f.category, f.key))
    cats_a = {c.category: c for c in a.by_category}
    cats_b = {c.category: c for c in b.by_category}
    shared_overall = None
    if only_a or only_b:
        shared_overall = compare_figures("(shared cases)", category_figures(OVERALL, [outcomes_a[k] for k in shared]),
                                         category_figures(OVERALL, [outcomes_b[k] for k in shared]))
    return Comparison(
        a=_side_of(a), b=_side_of(b), like_for_like=not notes, notes=notes,
        overall=compare_figures(OVERALL, a.overall, b.overall),
        by_category=[compare_figures(c, cats_a.get(c), cats_b.get(c)) for c in sorted(cats_a.keys() | cats_b.keys())],
        shared_overall=shared_overall, shared_cases=len(shared), flips=flips,
        flip_counts={kind.value: sum(f.change == kind for f in flips) for kind in FlipKind},
        only_in_a=[_ref(o) for o in only_a], only_in_b=[_ref(o) for o in only_b],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"))


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    """Compare two target runs' release.json. Raises judge.release_report.ReleaseError (naming the
    folder) when either is not a target run."""
    return compare_reports(load_release(run_a), load_release(run_b))


# --- markdown ---------------------------------------------------------------------------------------


def fmt_rate(estimate: Estimate) -> str:
    return "n/a" if estimate.value is None else f"{100 * estimate.value:.1f}%"


def fmt_delta(change: MeasureChange, *, verdict: bool = True) -> str:
    """B - A in percentage points with its interval, and (markdown) the verdict when the interval
    excludes 0."""
    d = change.difference
    if d.value is None or d.low is None or d.high is None:
        return "n/a"
    text = f"{100 * d.value:+.1f} pp [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    return f"{text} **{change.direction}**" if verdict and change.changed else text


def _cell(text: str) -> str:
    """A value from the data as a markdown table cell: a pipe or a line break would end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _rows(comparison: Comparison) -> Iterable[CategoryComparison]:
    yield from comparison.by_category
    yield comparison.overall
    if comparison.shared_overall is not None:
        yield comparison.shared_overall


def summary_table(comparison: Comparison) -> str:
    lines = ["| category | harm A | harm B | Δ [95% CI] | over-refusal A | B | Δ [95% CI] |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in _rows(comparison):
        h, r = row.harm_rate, row.over_refusal
        lines.append(f"| {_cell(row.category)} | {fmt_rate(h.a)} ({h.a_count}/{h.a_total}) | {fmt_rate(h.b)} "
                     f"({h.b_count}/{h.b_total}) | {fmt_delta(h)} | {fmt_rate(r.a)} ({r.a_count}/{r.a_total}) | "
                     f"{fmt_rate(r.b)} ({r.b_count}/{r.b_total}) | {fmt_delta(r)} |")
    return "\n".join(lines)


def flips_line(comparison: Comparison) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in comparison.flip_counts.items() if n)
    return (f"{len(comparison.flips)} flipped case(s) of {comparison.shared_cases} shared"
            + (f": {counts}" if counts else ""))


def format_comparison(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    lines = [f"# {b.target} (B) against {a.target} (A)", "",
             f"A: `{a.run}`, {a.cases} cases; B: `{b.run}`, {b.cases} cases. Δ is B − A in percentage points with "
             "Newcombe's 95% interval; **worse** / **better** when the interval excludes 0.", ""]
    if comparison.notes:
        lines += ["**Not like-for-like:**", ""] + [f"- {note}" for note in comparison.notes] + [""]
    lines += [summary_table(comparison), "", "## Over-refusal with partial refusals", "",
              "| category | A | B | Δ [95% CI] |", "|---|---:|---:|---:|"]
    for row in _rows(comparison):
        p = row.over_refusal_with_partial
        lines.append(f"| {_cell(row.category)} | {fmt_rate(p.a)} ({p.a_count}/{p.a_total}) | {fmt_rate(p.b)} "
                     f"({p.b_count}/{p.b_total}) | {fmt_delta(p)} |")
    lines += ["", "## Flipped cases", "", flips_line(comparison) + "."]
    if comparison.flips:
        lines += ["", "| case | category | expected | change | label A → B | refusal A → B "
                      "| first harmful turn A → B |", "|---|---|---|---|---|---|---|"]
        for f in comparison.flips:
            turns = (f"{f.first_harmful_turn_a or '-'} → {f.first_harmful_turn_b or '-'}" if f.kind != "prompt"
                     else "")
            lines.append(f"| {_cell(f.key)} | {_cell(f.category)} | {f.expected} | {f.change.value} | "
                         f"{f.label_a or 'ungraded'} → {f.label_b or 'ungraded'} | "
                         f"{f.refusal_a or 'unread'} → {f.refusal_b or 'unread'} | {turns} |")
    for name, refs in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if refs:
            lines += ["", f"## Only in {name} ({len(refs)})", ""]
            lines += [f"- {r.key} ({r.category}, expected {r.expected}, {r.label or 'ungraded'})" for r in refs]
    return "\n".join(lines) + "\n"


def default_out(run_a: Path, run_b: Path) -> Path:
    return run_b / f"compare-{run_a.resolve().name}"


# --- the page -----------------------------------------------------------------------------------------

TEMPLATE = "compare.html.j2"
SIDE_COLOURS = {"A": "#7f8c8d", "B": "#2c6fbb"}
DIRECTION_COLOURS = {"worse": "#c0392b", "better": "#3a8f5c", None: "#5f6b76"}


def fig_measure(figs: _Figures, comparison: Comparison, measure: Measure) -> Markup:
    """A and B per category with their Wilson intervals (left), and B - A with Newcombe's interval
    (right): red where the interval shows B worse, green where better, grey where it spans 0."""
    import matplotlib

    rows = list(_rows(comparison))
    names = [r.category for r in rows]
    changes = [r.measure(measure) for r in rows]
    title = MEASURE_NAMES[measure]
    with matplotlib.rc_context(_RC):
        fig = figs.new(7.5, 1.3 + 0.5 * len(rows))
        rates, deltas = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
        draw_intervals(rates, names, [("A", SIDE_COLOURS["A"], [c.a for c in changes]),
                                      ("B", SIDE_COLOURS["B"], [c.b for c in changes])], title)
        positions = list(range(len(rows)))[::-1]
        widest = 0.05
        for y, change in zip(positions, changes, strict=True):
            d = change.difference
            if d.value is None or d.low is None or d.high is None:
                continue
            widest = max(widest, abs(d.low), abs(d.high))
            colour = DIRECTION_COLOURS[change.direction]
            deltas.errorbar([d.value], [y], xerr=[[d.value - d.low], [d.high - d.value]], fmt="D", color=colour,
                            ecolor=colour, capsize=3, markersize=4.5, linewidth=1.2)
        deltas.axvline(0.0, color="#1d2329", linewidth=0.8)
        limit = min(1.0, widest * 1.1)
        deltas.set_xlim(-limit, limit)
        deltas.xaxis.set_major_formatter(lambda v, _pos: f"{100 * v:+.0f} pp")
        deltas.set_xlabel("B − A (Newcombe 95%)")
        deltas.grid(axis="x", color="#eeeeee")
        deltas.tick_params(axis="y", labelleft=False)
        return figs.svg(fig, f"{title}: A and B per category, and the difference B minus A")


def build_compare_html(comparison: Comparison, *, title: str | None = None) -> str:
    """The comparison page: one self-contained file, built as judge.report builds the run report (the
    same environment, the same Content-Security-Policy, figures as inline SVG, no script)."""
    figs = _Figures()
    figures = {m: fig_measure(figs, comparison, m) for m in MEASURES}
    env = _environment()
    env.filters["delta"] = lambda change: fmt_delta(change, verdict=False)  # the page shows a badge instead
    return str(env.get_template(TEMPLATE).render(
        title=title or f"psyjudge compare: {comparison.b.target} against {comparison.a.target}",
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"), c=comparison, rows=list(_rows(comparison)),
        measures=MEASURES, measure_names=MEASURE_NAMES, figures=figures, colours=COLOURS,
        flips_line=flips_line(comparison), kinds=[k.value for k in FlipKind]))


def write_comparison(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Write compare.json, compare.md and compare.html into `out` (made if missing); their paths.
    The files are owner-only, like everything psyjudge writes that quotes the judged answers."""
    ensure_private_dir(out)
    paths = {"json": out / COMPARE_JSON, "markdown": out / COMPARE_MARKDOWN, "html": out / COMPARE_HTML}
    write_text_atomic(paths["json"], comparison.model_dump_json(indent=2) + "\n")
    write_text_atomic(paths["markdown"], format_comparison(comparison))
    write_text_atomic(paths["html"], build_compare_html(comparison))
    return paths
