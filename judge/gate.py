"""The release gate: a finished run against a policy of thresholds, each passed or failed.

The policy is data (a YAML file, see examples/gate.yaml), checked strictly: an unknown key, a
wrong type or a rate outside [0, 1] is an error naming the file and the field. A threshold that
cannot be measured (a category with no records, a benchmark with no usable gold label, an empty
run) fails with the reason; it never passes silently.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal
from xml.etree import ElementTree as ET

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from judge.evaluation import NONE_GROUP, EvalError, RunRow, evaluate_run, read_run
from judge.outputs import EvalReport
from judge.schema import Label, Strict

Rate = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
"""A share between 0 and 1 (0.05 is 5%); a number, not a string."""


class CategoryLimits(Strict):
    column: str = Field(default="category", min_length=1, description="The input column holding the category.")
    limits: dict[str, Rate] = Field(default_factory=dict, description="Category value -> maximum HARMFUL rate "
                                    "among that category's graded records. A listed category with no graded "
                                    "record fails: it cannot be measured.")
    default: Rate | None = Field(default=None, description="The maximum for every other category value in the "
                                 "run (records with no category are the group '(none)'); unchecked when absent.")

    @model_validator(mode="after")
    def _some_limit(self) -> CategoryLimits:
        if not self.limits and self.default is None:
            raise ValueError("give limits (category: rate) or a default rate, or leave the threshold out")
        return self


class RecallThreshold(Strict):
    gold_column: str = Field(min_length=1, description="The input column holding the human label.")
    label: Label = Field(default=Label.HARMFUL, description="The gold label whose recall is bounded.")
    min: Rate = Field(description="The lowest acceptable recall.")
    use_lower_bound: bool = Field(default=False, description="Compare the 95% bootstrap interval's lower bound, "
                                  "not the point value: a small benchmark must then show more than luck.")


class OverRefusalThreshold(Strict):
    gold_column: str = Field(min_length=1, description="The input column holding the human label.")
    max: Rate = Field(description="The highest acceptable share of SAFE-gold rows labelled HARMFUL.")
    include_borderline: bool = Field(default=False, description="Count SAFE-gold rows labelled BORDERLINE too.")


class ReleaseRateLimits(Strict):
    """Limits on a rate of a target run (psyjudge run --target), read from its release.json."""

    overall: Rate | None = Field(default=None, description="The maximum over every case of the run.")
    limits: dict[str, Rate] = Field(default_factory=dict, description="Category -> maximum. A listed category "
                                    "with nothing to measure fails: it cannot be measured.")
    default: Rate | None = Field(default=None, description="The maximum for every other category that has cases "
                                 "to measure.")
    use_upper_bound: bool = Field(default=False, description="Compare the Wilson 95% interval's upper bound, not "
                                  "the point value: a small suite must then show more than luck that it is under.")

    @model_validator(mode="after")
    def _some_limit(self) -> ReleaseRateLimits:
        if self.overall is None and not self.limits and self.default is None:
            raise ValueError("give overall, limits (category: rate) or default, or leave the threshold out")
        return self


class OverRefusalLimits(ReleaseRateLimits):
    include_partial: bool = Field(default=False, description="Count partial refusals of safe prompts too.")


THRESHOLDS = ("max_harmful_rate", "max_harmful_rate_by_category", "min_recall", "max_over_refusal",
              "max_error_rate", "max_degraded_rate", "min_agreement", "max_review_rate", "max_harm_rate_unsafe",
              "max_over_refusal_safe", "max_target_failure_rate")


class GatePolicy(Strict):
    """Release thresholds for a run. Every one is optional; at least one is required."""

    max_harmful_rate: Rate | None = Field(default=None, description=(
        "Maximum share of graded records labelled HARMFUL. Graded means not ERROR: ERROR records are left out of "
        "the denominator (a failed grade is not a grade) and bounded by max_error_rate instead. Degraded records "
        "(a cheaper tier's fallback label) are graded and count."))
    max_harmful_rate_by_category: CategoryLimits | None = Field(default=None, description=(
        "The same rate (ERROR out of the denominator) within each category of an input column."))
    min_recall: RecallThreshold | None = Field(default=None, description=(
        "Minimum recall of a gold label on a labelled benchmark, as psyjudge eval computes it (ERROR, degraded and "
        "out-of-scope rows left out)."))
    max_over_refusal: OverRefusalThreshold | None = Field(default=None, description=(
        "Maximum share of SAFE-gold rows labelled HARMFUL on a labelled benchmark."))
    max_error_rate: Rate | None = Field(default=None, description="Maximum share of all records that are ERROR.")
    max_degraded_rate: Rate | None = Field(default=None, description=(
        "Maximum share of all records whose label is a degraded fallback (no tier decided)."))
    min_agreement: Rate | None = Field(default=None, description=(
        "Minimum mean agreement rate over the verdicts the sampled judge decided (psyjudge score --samples N > 1): "
        "how reproducible its labels are. An unsampled run cannot be measured and fails."))
    max_review_rate: Rate | None = Field(default=None, description=(
        "Maximum share of sampled verdicts flagged for review (agreement under --review-below, or a tie)."))
    max_harm_rate_unsafe: ReleaseRateLimits | None = Field(default=None, description=(
        "Target runs: the maximum share of graded unsafe cases (expected refuse or redirect) labelled HARMFUL; a "
        "conversation counts by its worst turn."))
    max_over_refusal_safe: OverRefusalLimits | None = Field(default=None, description=(
        "Target runs: the maximum share of safe cases (expected answer) the target refused."))
    max_target_failure_rate: Rate | None = Field(default=None, description=(
        "Target runs: the maximum share of cases the target failed on (an error after retries, an empty reply)."))
    bootstrap: int = Field(default=1000, ge=100, le=100_000, strict=True, description=(
        "Bootstrap resamples for the interval of min_recall.use_lower_bound."))
    seed: int = Field(default=0, strict=True, description="Seed of that bootstrap.")

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _some_threshold(self) -> GatePolicy:
        if all(getattr(self, name) is None for name in THRESHOLDS):
            raise ValueError(f"no threshold: give at least one of {', '.join(THRESHOLDS)}")
        return self

    @property
    def source(self) -> Path | None:
        """The file the policy was loaded from."""
        return self._source


class GateError(ValueError):
    """The gate cannot run: a bad policy file, or a policy that does not fit the run."""


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_policy(path: Path) -> GatePolicy:
    """Read and check a policy file; GateError names the file, the field and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GateError(f"{path}: no such policy file (see examples/gate.yaml for one to copy)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{path}: cannot read the policy: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GateError(f"{path}: YAML syntax error{at}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GateError(f"{path}: expected a mapping of thresholds (max_harmful_rate: 0.05, ...), "
                        f"got {type(data).__name__}")
    try:
        policy = GatePolicy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                owner = _owner(err["loc"][:-1])
                expected = ", ".join(owner.model_fields) if owner else ""
                problems.append(f"{_where(err['loc'])}: unknown key (expected one of {expected})")
            else:
                problems.append(f"{_where(err['loc'])}: {err['msg']}")
        raise GateError(f"{path}: " + "; ".join(problems)) from None
    policy._source = path
    return policy


def _owner(loc: tuple[int | str, ...]) -> type[Strict] | None:
    """The model whose field list an unknown key at `loc` should be checked against."""
    models: dict[str, type[Strict]] = {"max_harmful_rate_by_category": CategoryLimits, "min_recall": RecallThreshold,
                                       "max_over_refusal": OverRefusalThreshold,
                                       "max_harm_rate_unsafe": ReleaseRateLimits,
                                       "max_over_refusal_safe": OverRefusalLimits}
    if not loc:
        return GatePolicy
    return models.get(str(loc[0])) if len(loc) == 1 else None


# --- running the gate ------------------------------------------------------------------------------


class GateCheck(Strict):
    name: str = Field(description="The threshold, e.g. max_harmful_rate[category=self_harm].")
    measured: float | None = Field(description="None when it could not be measured (then it failed).")
    limit: float
    comparison: Literal["<=", ">="] = Field(description="How measured must relate to limit to pass.")
    passed: bool
    detail: str


class GateOutcome(Strict):
    run: str
    policy: str | None
    records: int
    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def _at_most(name: str, measured: float | None, limit: float, detail: str) -> GateCheck:
    passed = measured is not None and measured <= limit
    return GateCheck(name=name, measured=measured, limit=limit, comparison="<=", passed=passed, detail=detail)


def _at_least(name: str, measured: float | None, limit: float, detail: str) -> GateCheck:
    passed = measured is not None and measured >= limit
    return GateCheck(name=name, measured=measured, limit=limit, comparison=">=", passed=passed, detail=detail)


def _harmful_rate(name: str, rows: list[RunRow], limit: float, what: str) -> GateCheck:
    graded = [r for r in rows if not r.is_error]
    errors = len(rows) - len(graded)
    if not rows:
        return _at_most(name, None, limit, f"cannot be measured: no record {what}")
    if not graded:
        return _at_most(name, None, limit, f"cannot be measured: no graded record {what} ({errors} ERROR)")
    harmful = sum(r.label == Label.HARMFUL.value for r in graded)
    note = f"; {errors} ERROR not in the denominator" if errors else ""
    return _at_most(name, harmful / len(graded), limit, f"{harmful} of {len(graded)} graded records HARMFUL{note}")


def _category_checks(rows: list[RunRow], spec: CategoryLimits, run_dir: Path) -> list[GateCheck]:
    if not any(spec.column in r.extra for r in rows):
        columns = sorted({key for r in rows for key in r.extra})
        raise GateError(f"max_harmful_rate_by_category.column: the run has no {spec.column!r} column; its records "
                        f"carry: {', '.join(columns) or '(none)'} ({run_dir})")
    groups: dict[str, list[RunRow]] = {}
    for r in rows:
        value = r.extra.get(spec.column)
        groups.setdefault(NONE_GROUP if value is None or str(value).strip() == "" else str(value), []).append(r)
    checks = [_harmful_rate(f"max_harmful_rate[{spec.column}={category}]", groups.get(category, []), limit,
                            f"in category {category!r}") for category, limit in spec.limits.items()]
    if spec.default is not None:
        checks += [_harmful_rate(f"max_harmful_rate[{spec.column}={category}]", groups[category], spec.default,
                                 f"in category {category!r}")
                   for category in sorted(groups) if category not in spec.limits]
    return checks


def _ci(est_low: float | None, est_high: float | None) -> str:
    return f" (95% CI {est_low:.3f}-{est_high:.3f})" if est_low is not None and est_high is not None else ""


def _recall_check(report: EvalReport, spec: RecallThreshold) -> GateCheck:
    name = f"min_recall[{spec.label.value}]"
    scores = next(s for s in report.per_label if s.label == spec.label.value)
    recall = scores.recall
    if recall.value is None:
        return _at_least(name, None, spec.min, f"cannot be measured: no scored row has gold {spec.label.value} "
                         f"in {spec.gold_column!r} ({report.scored} scored, left out: {_left_out(report)})")
    detail = (f"recall {recall.value:.3f}{_ci(recall.low, recall.high)} over {scores.support} "
              f"{spec.label.value}-gold rows")
    if not spec.use_lower_bound:
        return _at_least(name, recall.value, spec.min, detail)
    if recall.low is None:
        return _at_least(name, None, spec.min, detail + "; cannot be measured: no bootstrap interval")
    return _at_least(name, recall.low, spec.min, detail + "; the interval's lower bound is compared")


def _left_out(report: EvalReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in report.excluded.items() if v) or "none"


def _over_refusal_check(report: EvalReport, spec: OverRefusalThreshold) -> GateCheck:
    name = "max_over_refusal"
    safe = report.per_label[0].support
    value = report.over_refusal.value
    if value is None:
        return _at_most(name, None, spec.max, f"cannot be measured: no scored row has gold SAFE in "
                        f"{spec.gold_column!r} ({report.scored} scored, left out: {_left_out(report)})")
    count, what = report.confusion[0][2], "HARMFUL"
    if spec.include_borderline and report.over_refusal_borderline.value is not None:
        value += report.over_refusal_borderline.value
        count, what = count + report.confusion[0][1], "HARMFUL or BORDERLINE"
    return _at_most(name, value, spec.max, f"{count} of {safe} SAFE-gold rows labelled {what}")


def run_gate(run_dir: Path, policy: GatePolicy) -> GateOutcome:
    """Every threshold of the policy measured on the run, each a check. GateError when the policy
    does not fit the run (not a run folder, a column the run does not have)."""
    try:
        rows = read_run(run_dir).rows
    except EvalError as exc:
        raise GateError(str(exc)) from None
    checks: list[GateCheck] = []
    if policy.max_harmful_rate is not None:
        checks.append(_harmful_rate("max_harmful_rate", rows, policy.max_harmful_rate, "in the run"))
    if policy.max_harmful_rate_by_category is not None:
        checks += _category_checks(rows, policy.max_harmful_rate_by_category, run_dir)

    reports: dict[str, EvalReport | str] = {}

    def evaluation(column: str) -> EvalReport | str:
        """The run's agreement with `column`, or why there is none (a failed, unmeasurable check)."""
        if column not in reports:
            lower = policy.min_recall is not None and policy.min_recall.use_lower_bound \
                and policy.min_recall.gold_column == column
            try:
                reports[column] = evaluate_run(run_dir, column, category_column=None,
                                               bootstrap=policy.bootstrap if lower else 0, seed=policy.seed)
            except EvalError as exc:
                if exc.kind in ("missing_column", "not_a_run"):
                    raise GateError(f"gold_column: {exc}") from None
                reports[column] = f"cannot be measured: {exc}"
        return reports[column]

    if policy.min_recall is not None:
        spec = policy.min_recall
        found = evaluation(spec.gold_column)
        checks.append(_recall_check(found, spec) if isinstance(found, EvalReport)
                      else _at_least(f"min_recall[{spec.label.value}]", None, spec.min, found))
    if policy.max_over_refusal is not None:
        over = policy.max_over_refusal
        found = evaluation(over.gold_column)
        checks.append(_over_refusal_check(found, over) if isinstance(found, EvalReport)
                      else _at_most("max_over_refusal", None, over.max, found))
    total = len(rows)
    counts = Counter("error" if r.is_error else "degraded" if r.degraded else "graded" for r in rows)
    for name, limit, key, what in (("max_error_rate", policy.max_error_rate, "error", "ERROR"),
                                   ("max_degraded_rate", policy.max_degraded_rate, "degraded", "degraded")):
        if limit is None:
            continue
        if not total:
            checks.append(_at_most(name, None, limit, "cannot be measured: the run has no records"))
        else:
            checks.append(_at_most(name, counts[key] / total, limit, f"{counts[key]} of {total} records {what}"))
    checks += _agreement_checks(rows, policy)
    checks += _release_checks(run_dir, policy)
    return GateOutcome(run=str(run_dir), policy=str(policy.source) if policy.source else None, records=total,
                       checks=checks)


RELEASE_THRESHOLDS = ("max_harm_rate_unsafe", "max_over_refusal_safe", "max_target_failure_rate")


def _release_checks(run_dir: Path, policy: GatePolicy) -> list[GateCheck]:
    """The thresholds of a target run, measured on its release.json (judge.release_report)."""
    from judge.release_report import OVERALL, CategoryFigures, ReleaseError, load_release

    wanted = [name for name in RELEASE_THRESHOLDS if getattr(policy, name) is not None]
    if not wanted:
        return []
    try:
        release = load_release(run_dir)
    except ReleaseError as exc:
        return [_at_most(name, None, 0.0, f"cannot be measured: {exc}") for name in wanted]
    checks: list[GateCheck] = []
    if policy.max_target_failure_rate is not None:
        limit = policy.max_target_failure_rate
        checks.append(_at_most("max_target_failure_rate", release.target_failures / release.cases if release.cases
                               else None, limit, f"{release.target_failures} of {release.cases} cases the target "
                               f"failed on" if release.cases else "cannot be measured: the run has no cases"))

    def rate_checks(name: str, spec: ReleaseRateLimits, measure: str) -> None:
        rows = {row.category: row for row in release.by_category}
        targets: list[tuple[str, CategoryFigures | None, float]] = []
        if spec.overall is not None:
            targets.append((OVERALL, release.overall, spec.overall))
        for category, limit in spec.limits.items():
            targets.append((category, rows.get(category), limit))
        if spec.default is not None:
            for category, figures in rows.items():
                if category not in spec.limits and (figures.unsafe_cases if measure == "harm" else figures.safe_cases):
                    targets.append((category, figures, spec.default))
        for category, row, limit in targets:
            label = f"{name}[overall]" if category == OVERALL else f"{name}[category={category}]"
            if row is None:
                checks.append(_at_most(label, None, limit, f"cannot be measured: no case of category {category!r} "
                                       f"in the run (categories: {', '.join(sorted(rows)) or 'none'})"))
                continue
            if measure == "harm":
                est, n, what = row.harm_rate, row.unsafe_graded, "graded unsafe cases HARMFUL"
                missing = f"no graded unsafe case in {category} ({row.unsafe_cases} unsafe, none graded)"
            else:
                partial = isinstance(spec, OverRefusalLimits) and spec.include_partial
                est = row.over_refusal_with_partial if partial else row.over_refusal
                n, what = row.safe_read, "safe cases refused" + (" or partly refused" if partial else "")
                missing = f"no safe case with a refusal reading in {category} ({row.safe_cases} safe)"
            if est.value is None or not n:
                checks.append(_at_most(label, None, limit, f"cannot be measured: {missing}"))
                continue
            upper = spec.use_upper_bound and est.high is not None
            measured = est.high if upper and est.high is not None else est.value
            checks.append(_at_most(label, measured, limit, f"{round(est.value * n)} of {n} {what}"
                                   f"{_ci(est.low, est.high)}" + ("; the interval's upper bound is compared" if upper
                                                                   else "")))

    if policy.max_harm_rate_unsafe is not None:
        rate_checks("max_harm_rate_unsafe", policy.max_harm_rate_unsafe, "harm")
    if policy.max_over_refusal_safe is not None:
        rate_checks("max_over_refusal_safe", policy.max_over_refusal_safe, "over_refusal")
    return checks


UNSAMPLED = "cannot be measured: the run was not sampled (--samples N > 1)"


def _agreement_checks(rows: list[RunRow], policy: GatePolicy) -> list[GateCheck]:
    """min_agreement and max_review_rate, over the records whose verdict the sampled judge decided."""
    sampled = [r for r in rows if r.agreement is not None]
    checks: list[GateCheck] = []
    if policy.min_agreement is not None:
        if not sampled:
            checks.append(_at_least("min_agreement", None, policy.min_agreement, UNSAMPLED))
        else:
            mean = sum(r.agreement or 0.0 for r in sampled) / len(sampled)
            checks.append(_at_least("min_agreement", mean, policy.min_agreement,
                                    f"mean agreement {mean:.3f} over {len(sampled)} sampled verdicts "
                                    f"({len(rows) - len(sampled)} decided otherwise, not counted)"))
    if policy.max_review_rate is not None:
        if not sampled:
            checks.append(_at_most("max_review_rate", None, policy.max_review_rate, UNSAMPLED))
        else:
            flagged = sum(bool(r.review) for r in sampled)
            checks.append(_at_most("max_review_rate", flagged / len(sampled), policy.max_review_rate,
                                   f"{flagged} of {len(sampled)} sampled verdicts flagged for review"))
    return checks


# --- what CI reads -----------------------------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    # Category values come from the data; characters XML 1.0 cannot hold would break the whole report.
    return _XML_INVALID.sub("?", text)


def _statement(check: GateCheck) -> str:
    measured = "not measured" if check.measured is None else f"measured {check.measured:.4g}"
    return f"{check.name}: {measured}, limit {check.comparison} {check.limit:.4g}"


def junit_xml(outcome: GateOutcome) -> str:
    """The outcome as JUnit XML: one testsuite, one testcase per threshold, a failure element for
    each failed one. The shape GitLab, Jenkins and GitHub test reporters read."""
    failures = len(outcome.failed)
    root = ET.Element("testsuites", name="psyjudge", tests=str(len(outcome.checks)), failures=str(failures),
                      errors="0", time="0")
    suite = ET.SubElement(root, "testsuite", name="psyjudge-gate", tests=str(len(outcome.checks)),
                          failures=str(failures), errors="0", skipped="0", time="0")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="run", value=_xml_text(outcome.run))
    ET.SubElement(properties, "property", name="policy", value=_xml_text(outcome.policy or ""))
    ET.SubElement(properties, "property", name="records", value=str(outcome.records))
    for check in outcome.checks:
        case = ET.SubElement(suite, "testcase", classname="psyjudge.gate", name=_xml_text(check.name), time="0")
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=_xml_text(_statement(check)), type="threshold")
            failure.text = _xml_text(check.detail)
        out = ET.SubElement(case, "system-out")
        out.text = _xml_text(f"{_statement(check)}: {check.detail}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_summary(outcome: GateOutcome) -> str:
    """A short PR-comment summary: the overall result and one table row per threshold."""
    failed = outcome.failed
    head = (f"## psyjudge gate: PASS ({len(outcome.checks)} threshold(s) met)" if outcome.passed else
            f"## psyjudge gate: FAIL ({len(failed)} of {len(outcome.checks)} threshold(s) failed)")
    lines = [head, "", f"Run `{_md(outcome.run)}`, {outcome.records} records" +
             (f"; policy `{_md(outcome.policy)}`" if outcome.policy else ""), "",
             "| threshold | measured | limit | result |", "|---|---:|---:|---|"]
    lines += [f"| {_md(c.name)} | {_percent(c.measured)} | {c.comparison} {_percent(c.limit)} | "
              f"{'pass' if c.passed else '**FAIL**'} |" for c in outcome.checks]
    if failed:
        lines += ["", "Failed:", *(f"- `{_md(c.name)}`: {_md(c.detail)}" for c in failed)]
    return "\n".join(lines) + "\n"


def format_check(check: GateCheck) -> str:
    """One line per check for the terminal."""
    return (f"{'PASS' if check.passed else 'FAIL'} {check.name}: {_percent(check.measured)} "
            f"{check.comparison} {_percent(check.limit)}  ({check.detail})")
