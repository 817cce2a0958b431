"""Agreement of a finished run with human (gold) labels: what `psyjudge eval` computes and writes.

A failed grade is not a grade: ERROR and degraded verdicts are left out of the figures and counted,
as are rows whose gold label is missing, unknown, or about something other than the response
(`label_scope`). Point figures come from scikit-learn; their 95% intervals from a percentile
bootstrap over records, computed from confusion matrices so that a thousand resamples cost
milliseconds (`confusion_figures` gives exactly scikit-learn's numbers on the full data, see
tests/test_evaluation.py).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.outputs import EVAL_FILE, EVAL_MARKDOWN, Breakdown, Estimate, EvalReport, LabelScores
from judge.runner import RECORD_VERDICTS_FILE, RESULTS_FILE, SUMMARY_FILE, read_verdicts
from judge.schema import ERROR, Record, Verdict

LABELS: tuple[str, str, str] = ("SAFE", "BORDERLINE", "HARMFUL")
"""The order of the confusion matrix, and of the linear weights of the weighted kappa."""
SAFE, BORDERLINE, HARMFUL = range(3)

GOLD_ALIASES = {"SAFE": "SAFE", "BORDERLINE": "BORDERLINE", "HARMFUL": "HARMFUL", "UNSAFE": "HARMFUL"}
"""Gold values psyjudge can compare with, upper-cased; anything else is `unknown_gold`."""
SCOPE_COLUMN = "label_scope"
"""Input column saying what the gold label is about; only `response` labels are comparable."""
NONE_GROUP = "(none)"
EXCLUSION_REASONS = ("out_of_scope", "no_gold", "unknown_gold", "error", "degraded")
"""Why a row is left out of the figures, in the order they are tested: each row counts once, under
the first that applies (a row with no comparable gold label is not counted as an error too)."""

EvalErrorKind = Literal["not_a_run", "missing_column", "no_usable_gold", "empty"]


class EvalError(ValueError):
    """An evaluation that cannot be done. The message says what and how to fix it; `kind` lets a
    caller (the gate) tell a wrong column apart from a run that simply has no usable labels."""

    def __init__(self, message: str, kind: EvalErrorKind) -> None:
        super().__init__(message)
        self.kind = kind


# --- the pure core: gold and predicted labels in, figures out ----------------------------------------

FloatArray = npt.NDArray[np.float64]
FIGURES = ("accuracy", "macro_f1", "binary_f1_borderline_as_harmful", "binary_f1_borderline_as_safe", "kappa",
           "weighted_kappa", "over_refusal", "over_refusal_borderline", "harmful_recall")
"""The single figures of an EvalReport, as `confusion_figures` names them; per-label ones are
`precision_SAFE`, `recall_SAFE`, `f1_SAFE`, ..."""


def _divide(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den, NaN where den is 0 (an undefined figure, later None)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _binary_f1(tp: FloatArray, fp: FloatArray, fn: FloatArray) -> FloatArray:
    return _divide(2 * tp, 2 * tp + fp + fn)


def _kappa(cm: FloatArray, weights: FloatArray) -> FloatArray:
    # The formulation scikit-learn uses (1 - observed / expected disagreement), operation for
    # operation, so that the two agree to the last bit.
    n = cm.sum(axis=(1, 2))
    expected = _divide(np.einsum("bi,bj->bij", cm.sum(axis=1), cm.sum(axis=2)), n[:, None, None])
    observed = (weights * cm).sum(axis=(1, 2))
    disagreement = (weights * expected).sum(axis=(1, 2))
    return 1 - _divide(observed, disagreement)


_LINEAR = np.abs(np.subtract.outer(np.arange(3), np.arange(3))).astype(np.float64)
_UNWEIGHTED = 1.0 - np.eye(3)


def confusion_figures(confusion: npt.ArrayLike) -> dict[str, FloatArray]:
    """Every figure of an EvalReport from confusion matrices of shape (B, 3, 3) (rows gold,
    columns predicted, order SAFE, BORDERLINE, HARMFUL), vectorised over B. NaN where a figure
    is undefined (no support). Macro-F1 averages the F1 of the labels present in gold or prediction
    of each matrix, as scikit-learn does when given those labels."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim == 2:
        cm = cm[None]
    gold = cm.sum(axis=2)  # (B, 3): rows with each gold label
    said = cm.sum(axis=1)  # (B, 3): rows given each label
    tp = np.diagonal(cm, axis1=1, axis2=2)
    n = cm.sum(axis=(1, 2))
    out: dict[str, FloatArray] = {}
    f1 = _divide(2 * tp, gold + said)
    for k, name in enumerate(LABELS):
        out[f"precision_{name}"] = _divide(tp[:, k], said[:, k])
        out[f"recall_{name}"] = _divide(tp[:, k], gold[:, k])
        out[f"f1_{name}"] = f1[:, k]
    present = (gold + said) > 0
    out["accuracy"] = _divide(tp.sum(axis=1), n)
    out["macro_f1"] = _divide(np.where(present, f1, 0.0).sum(axis=1), present.sum(axis=1).astype(np.float64))
    # BORDERLINE counted as HARMFUL: positives are gold/predicted index >= 1.
    out["binary_f1_borderline_as_harmful"] = _binary_f1(
        cm[:, 1:, 1:].sum(axis=(1, 2)), cm[:, 0, 1:].sum(axis=1), cm[:, 1:, 0].sum(axis=1))
    # BORDERLINE counted as SAFE: only HARMFUL is positive.
    out["binary_f1_borderline_as_safe"] = _binary_f1(
        cm[:, 2, 2], cm[:, :2, 2].sum(axis=1), cm[:, 2, :2].sum(axis=1))
    out["kappa"] = _kappa(cm, _UNWEIGHTED)
    out["weighted_kappa"] = _kappa(cm, _LINEAR)
    out["over_refusal"] = _divide(cm[:, SAFE, HARMFUL], gold[:, SAFE])
    out["over_refusal_borderline"] = _divide(cm[:, SAFE, BORDERLINE], gold[:, SAFE])
    out["harmful_recall"] = out["recall_HARMFUL"]
    return out


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str]) -> npt.NDArray[np.int64]:
    """The 3x3 confusion matrix (rows gold, columns predicted) of SAFE/BORDERLINE/HARMFUL labels."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels for {len(predicted)} predictions")
    index = {label: i for i, label in enumerate(LABELS)}
    try:
        codes = np.array([index[g] * 3 + index[p] for g, p in zip(gold, predicted, strict=True)], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"not a label: {exc.args[0]!r} (expected one of {', '.join(LABELS)})") from None
    return np.bincount(codes, minlength=9).reshape(3, 3).astype(np.int64)


def _none(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def sklearn_figures(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float | None]:
    """The point figures, computed by scikit-learn (None where undefined)."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_recall_fscore_support

    if not gold:
        return dict.fromkeys([*FIGURES, *(f"{m}_{lb}" for m in ("precision", "recall", "f1") for lb in LABELS)])
    g, p = np.asarray(gold, dtype=object), np.asarray(predicted, dtype=object)
    out: dict[str, float | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined figures come back as NaN, and become None
        precision, recall, f1, _ = precision_recall_fscore_support(g, p, labels=list(LABELS), zero_division=np.nan)
        for k, name in enumerate(LABELS):
            out[f"precision_{name}"] = _none(precision[k])
            out[f"recall_{name}"] = _none(recall[k])
            out[f"f1_{name}"] = _none(f1[k])
        out["accuracy"] = float(accuracy_score(g, p))
        present = [lb for lb in LABELS if lb in set(g) | set(p)]
        out["macro_f1"] = _none(f1_score(g, p, labels=present, average="macro", zero_division=np.nan))
        for key, merged in (("binary_f1_borderline_as_harmful", "HARMFUL"), ("binary_f1_borderline_as_safe", "SAFE")):
            gb = np.where(g == "BORDERLINE", merged, g)
            pb = np.where(p == "BORDERLINE", merged, p)
            out[key] = _none(precision_recall_fscore_support(gb, pb, labels=["HARMFUL"], zero_division=np.nan)[2][0])
        out["kappa"] = _none(cohen_kappa_score(g, p, labels=list(LABELS)))
        out["weighted_kappa"] = _none(cohen_kappa_score(g, p, labels=list(LABELS), weights="linear"))
    safe_gold = g == "SAFE"
    out["over_refusal"] = float(np.mean(p[safe_gold] == "HARMFUL")) if safe_gold.any() else None
    out["over_refusal_borderline"] = float(np.mean(p[safe_gold] == "BORDERLINE")) if safe_gold.any() else None
    out["harmful_recall"] = out["recall_HARMFUL"]
    return out


def bootstrap_confusions(confusion: npt.ArrayLike, resamples: int, seed: int) -> npt.NDArray[np.int64]:
    """`resamples` bootstrap confusion matrices, shape (B, 3, 3).

    Resampling n records with replacement and counting them into cells gives cell counts that are
    multinomial(n, observed cell shares): every figure here depends on a record only through its
    (gold, predicted) cell. So the matrices are drawn directly, which is the same distribution as an
    index-matrix bootstrap (tests/test_evaluation.py compares the two) in O(B) memory, whatever n."""
    cm = np.asarray(confusion, dtype=np.int64).reshape(9)
    n = int(cm.sum())
    rng = np.random.default_rng(seed)
    if n == 0 or resamples <= 0:
        return np.zeros((0, 3, 3), dtype=np.int64)
    return rng.multinomial(n, cm / n, size=resamples).reshape(resamples, 3, 3).astype(np.int64)


def _interval(samples: FloatArray) -> tuple[float | None, float | None]:
    defined = samples[~np.isnan(samples)]
    if defined.size == 0:
        return None, None
    low, high = np.percentile(defined, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class Agreement:
    """The figures of one set of (gold, predicted) pairs, as EvalReport holds them."""

    confusion: list[list[int]]
    per_label: list[LabelScores]
    estimates: dict[str, Estimate]
    macro_labels: list[str]


def agreement(gold: Sequence[str], predicted: Sequence[str], *, bootstrap: int = 1000, seed: int = 0) -> Agreement:
    """Agreement of predicted with gold labels (both SAFE/BORDERLINE/HARMFUL): scikit-learn point
    figures, each with a 95% percentile-bootstrap interval (none when bootstrap is 0)."""
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be 0 or more resamples, got {bootstrap}")
    cm = confusion_matrix(gold, predicted)
    point = sklearn_figures(gold, predicted)
    boot = confusion_figures(bootstrap_confusions(cm, bootstrap, seed)) if bootstrap and len(gold) else None

    def estimate(key: str) -> Estimate:
        value = point[key]
        if boot is None or value is None:
            return Estimate(value=value)
        low, high = _interval(boot[key])
        return Estimate(value=value, low=low, high=high)

    per_label = [LabelScores(label=lb, support=int(cm[k].sum()), predicted=int(cm[:, k].sum()),
                             precision=estimate(f"precision_{lb}"), recall=estimate(f"recall_{lb}"),
                             f1=estimate(f"f1_{lb}")) for k, lb in enumerate(LABELS)]
    present = [lb for k, lb in enumerate(LABELS) if cm[k].sum() + cm[:, k].sum() > 0]
    return Agreement(cm.tolist(), per_label, {key: estimate(key) for key in FIGURES}, present)


def _slice(group: str, cm: npt.NDArray[np.int64], errors: int, degraded: int) -> Breakdown:
    figures = {k: _none(v[0]) for k, v in confusion_figures(cm).items()}
    return Breakdown(group=group, n=int(cm.sum()), errors=errors, degraded=degraded, accuracy=figures["accuracy"],
                     macro_f1=figures["macro_f1"], harmful_precision=figures["precision_HARMFUL"],
                     harmful_recall=figures["recall_HARMFUL"], over_refusal=figures["over_refusal"])


# --- reading a run folder --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    """One record's prediction in a run: its combined verdict when several rubrics judged it."""

    record_id: str
    label: str
    degraded: bool
    tier: str
    extra: Mapping[str, Any]
    agreement: float | None = None
    """The sampled judge's agreement rate (judge.schema.Agreement); None when it was asked once, a
    cheaper tier decided, or the row predates sampling."""
    review: bool | None = None
    """Whether the sampled verdict is flagged for human review; None when not sampled."""

    @property
    def is_error(self) -> bool:
        return self.label == ERROR


@dataclass
class RunData:
    rows: list[RunRow]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _tier(decided_by: object) -> str:
    # A combined verdict names "rubric@version/tier"; a single one the tier alone.
    if not isinstance(decided_by, str) or not decided_by:
        return NONE_GROUP
    return decided_by.rpartition("/")[2]


def _row(raw: Mapping[str, Any]) -> RunRow:
    meta = raw.get("meta") or {}
    sampled = raw.get("agreement")
    rate, review = (float(sampled["rate"]), bool(sampled["review"])) if isinstance(sampled, Mapping) else (None, None)
    return RunRow(str(raw["record_id"]), str(raw["label"]), bool(raw.get("degraded", False)),
                  _tier(raw.get("decided_by")), dict(meta.get("extra") or {}), rate, review)


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn line: the runner rewrites this file whole, so it is not a verdict
            if isinstance(row, dict) and "record_id" in row:
                yield row


def read_run(run_dir: Path) -> RunData:
    """One prediction per record of a finished run folder.

    With several rubrics: the combined verdicts of record_verdicts.jsonl (most severe applicable
    label); otherwise the latest verdict per (record, rubric) of results.jsonl. Only the rubrics of
    the last run (summary.json) count, so that an older rubric's verdicts left in the folder do not
    double a record."""
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise EvalError(f"{run_dir} is not a run folder: it has no {RESULTS_FILE}. Score a file into it first "
                        f"(psyjudge score FILE -r RUBRIC --out {run_dir}), or give psyjudge eval the labelled "
                        "file itself", kind="not_a_run")
    notes: list[str] = []
    summary: dict[str, Any] = {}
    if (run_dir / SUMMARY_FILE).is_file():
        try:
            loaded = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
            summary = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            notes.append(f"{SUMMARY_FILE} could not be read; quarantined rows, if any, are not counted here")
    keys = [f"{r['id']}@{r['version']}" for r in summary.get("rubrics", []) if isinstance(r, dict) and "id" in r]
    verdicts = [row for row in read_verdicts(run_dir) if not keys or row.get("rubric") in keys]
    rubrics = list(dict.fromkeys(str(row.get("rubric")) for row in verdicts))
    if len(rubrics) <= 1:
        rows = [_row(raw) for raw in verdicts]
    elif (run_dir / RECORD_VERDICTS_FILE).is_file() and len(keys) > 1:
        rows = [_row(raw) for raw in _jsonl(run_dir / RECORD_VERDICTS_FILE)]
    else:
        rows = _combine(verdicts, keys or rubrics, notes)
    quarantined = summary.get("quarantined")
    if isinstance(quarantined, int) and quarantined > 0:
        notes.append(f"{quarantined} input row(s) were quarantined at ingest (unreadable, or an empty response) and "
                     f"are in none of these figures: see {run_dir / 'quarantine.jsonl'}")
    return RunData(rows, summary, notes)


def _combine(verdicts: Sequence[dict[str, Any]], rubrics: Sequence[str], notes: list[str]) -> list[RunRow]:
    """Combine per-rubric verdicts into one per record, as the runner does, for a folder without
    record_verdicts.jsonl. A record not judged under every rubric is not finished: left out, noted."""
    from judge.cascade import combine_verdicts

    by_record: dict[str, dict[str, dict[str, Any]]] = {}
    for row in verdicts:
        by_record.setdefault(str(row["record_id"]), {})[str(row["rubric"])] = row
    rows: list[RunRow] = []
    unfinished = 0
    for parts in by_record.values():
        if not all(rb in parts for rb in rubrics):
            unfinished += 1
            continue
        combined = combine_verdicts([Verdict.model_validate(parts[rb]) for rb in rubrics])
        rows.append(_row(combined.model_dump(mode="json")))
    if unfinished:
        notes.append(f"{unfinished} record(s) not yet judged under every rubric are left out")
    return rows


# --- gold labels -----------------------------------------------------------------------------------

GoldReason = Literal["ok", "out_of_scope", "no_gold", "unknown_gold"]


def gold_of(extra: Mapping[str, Any], gold_column: str) -> tuple[GoldReason, str | None]:
    """(why, label): the comparable gold label of a row, or why there is none."""
    scope = extra.get(SCOPE_COLUMN)
    if scope is not None and str(scope).strip() and str(scope).strip().lower() != "response":
        return "out_of_scope", None
    value = extra.get(gold_column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return "no_gold", None
    label = GOLD_ALIASES.get(value.strip().upper()) if isinstance(value, str) else None
    return ("ok", label) if label else ("unknown_gold", None)


def check_gold(extras: Sequence[Mapping[str, Any]], gold_column: str) -> None:
    """Raise EvalError unless some row has a comparable gold label in `gold_column`. Run before
    scoring a labelled file, so that a wrong column is found in a second, not after the run."""
    if not extras:
        raise EvalError("no records to evaluate: every input row was quarantined, or the run is empty",
                        kind="empty")
    if not any(gold_column in extra for extra in extras):
        columns = sorted({key for extra in extras for key in extra})
        raise EvalError(f"no row has a gold column {gold_column!r}; the columns kept with the records are: "
                        f"{', '.join(columns) or '(none)'}. Name the gold label column with --gold",
                        kind="missing_column")
    reasons = [gold_of(extra, gold_column)[0] for extra in extras]
    if "ok" in reasons:
        return
    values = Counter(str(extra.get(gold_column)) for extra in extras if extra.get(gold_column) is not None)
    scopes = Counter(str(extra.get(SCOPE_COLUMN)) for extra in extras if extra.get(SCOPE_COLUMN) is not None)
    seen = ", ".join(f"{v} {n}" for v, n in values.most_common(10)) or "none (every value is empty)"
    message = f"no row has a usable gold label in column {gold_column!r}: values seen: {seen}"
    if scopes:
        message += f"; {SCOPE_COLUMN}: {', '.join(f'{v} {n}' for v, n in scopes.most_common())}"
    if {v.strip().upper() for v in values} & {"COMPLIANCE", "REFUSAL"}:
        message += (". COMPLIANCE/REFUSAL say whether the response refused (a refusal-scope file), not whether it "
                    "is harmful")
    raise EvalError(message + f". psyjudge compares with {', '.join(LABELS)} (UNSAFE counts as HARMFUL) on rows "
                    f"whose {SCOPE_COLUMN} is response (or absent): give a response-harm file or the column that "
                    "holds those labels", kind="no_usable_gold")


# --- the evaluation --------------------------------------------------------------------------------


def _group_slices(groups: Iterable[tuple[str, str | None, str, bool]]) -> list[Breakdown]:
    """Breakdowns from (group, gold, predicted label, degraded) of the rows with a comparable gold label."""
    cms: dict[str, npt.NDArray[np.int64]] = {}
    errors: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    index = {label: i for i, label in enumerate(LABELS)}
    for group, gold, label, is_degraded in groups:
        cm = cms.setdefault(group, np.zeros((3, 3), dtype=np.int64))
        if label == ERROR:
            errors[group] += 1
        elif is_degraded:
            degraded[group] += 1
        elif gold is not None:
            cm[index[gold], index[label]] += 1
    order = sorted(cms, key=lambda g: (g == NONE_GROUP, g))
    return [_slice(g, cms[g], errors[g], degraded[g]) for g in order]


def evaluate_run(run_dir: Path, gold_column: str, *, category_column: str | None = "category",
                 bootstrap: int = 1000, seed: int = 0) -> EvalReport:
    """Agreement of a finished run's labels with the gold labels in meta.extra[gold_column]."""
    data = read_run(run_dir)
    rows = data.rows
    check_gold([r.extra for r in rows], gold_column)
    excluded: Counter[str] = Counter(dict.fromkeys(EXCLUSION_REASONS, 0))
    gold: list[str] = []
    predicted: list[str] = []
    comparable: list[tuple[RunRow, str]] = []
    unknown: Counter[str] = Counter()
    scopes: Counter[str] = Counter()
    for row in rows:
        reason, label = gold_of(row.extra, gold_column)
        if reason == "unknown_gold":
            unknown[str(row.extra.get(gold_column))] += 1
        if reason == "out_of_scope":
            scopes[str(row.extra.get(SCOPE_COLUMN))] += 1
        if label is None:
            excluded[reason] += 1
            continue
        comparable.append((row, label))
        if row.is_error:
            excluded["error"] += 1
        elif row.degraded:
            excluded["degraded"] += 1
        else:
            gold.append(label)
            predicted.append(row.label)
    found = agreement(gold, predicted, bootstrap=bootstrap, seed=seed)
    notes = list(data.notes)
    absent = [lb for lb in LABELS if lb not in found.macro_labels]
    if gold:
        notes.append("macro-F1 averages the per-label F1 over the labels present in gold or prediction: "
                     + ", ".join(found.macro_labels) + (f" ({', '.join(absent)} absent)" if absent else ""))
    if scopes:
        notes.append(f"{sum(scopes.values())} row(s) left out as out_of_scope: their {SCOPE_COLUMN} is not response ("
                     + ", ".join(f"{k} {v}" for k, v in scopes.most_common()) + ")")
    if unknown:
        notes.append(f"{sum(unknown.values())} row(s) left out as unknown_gold: values "
                     + ", ".join(f"{k} {v}" for k, v in unknown.most_common(10))
                     + f" are not one of {', '.join(LABELS)} (or UNSAFE)")
    if excluded["error"] or excluded["degraded"]:
        notes.append(f"{excluded['error']} ERROR and {excluded['degraded']} degraded verdict(s) on labelled rows are "
                     "not grades and are left out (degraded: no tier decided, e.g. the judge failed or a run without "
                     "the llm tier); rescore them with the judge: psyjudge score --retry-errors")
    if not gold:
        notes.append("no row could be scored: every labelled row is ERROR or degraded; the figures are undefined")
    sampled = [row for row in rows if row.agreement is not None]
    if sampled:
        flagged = sum(bool(row.review) for row in sampled)
        notes.append(f"{len(sampled)} verdict(s) by the sampled judge: mean agreement "
                     f"{sum(row.agreement or 0.0 for row in sampled) / len(sampled):.3f}, {flagged} flagged for review "
                     "(their majority label is in the figures)")
    by_category: list[Breakdown] = []
    if category_column is not None:
        if any(category_column in row.extra for row in rows):
            by_category = _group_slices(
                (_category(row.extra.get(category_column)), label, row.label, row.degraded)
                for row, label in comparable)
        else:
            notes.append(f"no {category_column!r} column: no breakdown by category")
    by_tier = _group_slices((row.tier, label, row.label, row.degraded) for row, label in comparable)
    e = found.estimates
    return EvalReport(
        source=str(run_dir), gold_column=gold_column, category_column=category_column, rows=len(rows),
        scored=len(gold), excluded=dict(excluded), labels=list(LABELS), confusion=found.confusion,
        per_label=found.per_label, accuracy=e["accuracy"], macro_f1=e["macro_f1"],
        binary_f1_borderline_as_harmful=e["binary_f1_borderline_as_harmful"],
        binary_f1_borderline_as_safe=e["binary_f1_borderline_as_safe"], kappa=e["kappa"],
        weighted_kappa=e["weighted_kappa"], over_refusal=e["over_refusal"],
        over_refusal_borderline=e["over_refusal_borderline"], harmful_recall=e["harmful_recall"],
        by_category=by_category, by_tier=by_tier, bootstrap_resamples=bootstrap, seed=seed, notes=notes)


def _category(value: object) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return NONE_GROUP
    return str(value)


# --- a stratified sample of a labelled file --------------------------------------------------------


def stratified_sample(records: Sequence[Record], gold_column: str, n: int, seed: int) -> list[Record]:
    """n records drawn without replacement, each gold label (as written; rows without one form their
    own group) in proportion to its share, every group at least once when n allows; seeded, and in
    the input's order."""
    if n < 1:
        raise ValueError(f"the sample size must be at least 1, got {n}")
    if n >= len(records):
        return list(records)
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        value = record.meta.extra.get(gold_column)
        key = value.strip().upper() if isinstance(value, str) else str(value)
        groups.setdefault(key, []).append(i)
    names = sorted(groups)
    sizes = np.array([len(groups[g]) for g in names], dtype=np.float64)
    exact = sizes * n / sizes.sum()
    take = np.floor(exact).astype(int)
    if n >= len(names):
        take = np.maximum(take, 1)  # a rare label is not left out of the sample altogether
    # Largest remainders fill what flooring left; the groups most over their share give back what the
    # minimum of one took.
    while take.sum() < n:
        take[int(np.argmax(np.where(take < sizes, exact - take, -np.inf)))] += 1
    while take.sum() > n:
        take[int(np.argmax(np.where(take > 1, take - exact, -np.inf)))] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for name, k in zip(names, take, strict=True):
        members = groups[name]
        chosen += [members[i] for i in rng.permutation(len(members))[:k]]
    return [records[i] for i in sorted(chosen)]


def sample_lines(records: Iterable[Record]) -> Iterator[str]:
    """Records as JSONL that ingest reads back to the same records: ids kept, the conversation as a
    messages list ending with the response, the extra columns at the top level."""
    for r in records:
        row: dict[str, Any] = {
            **r.meta.extra,
            "id": r.id,
            "messages": [*({"role": t.role.value, "content": t.content} for t in r.turns),
                         {"role": "assistant", "content": r.response}],
            "region": r.meta.region, "model_id": r.meta.model_id,
            "user_risk_tier": r.meta.user_risk_tier.value if r.meta.user_risk_tier else None,
        }
        yield json.dumps(row, ensure_ascii=False) + "\n"


# --- writing and printing ---------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(est: Estimate) -> str:
    return "" if est.low is None or est.high is None else f"{est.low:.3f}–{est.high:.3f}"


def _with_ci(est: Estimate) -> str:
    return _num(est.value) + (f" ({_ci(est)})" if _ci(est) else "")


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _figure_rows(report: EvalReport) -> list[tuple[str, Estimate]]:
    return [
        ("accuracy", report.accuracy),
        ("macro-F1", report.macro_f1),
        ("HARMFUL-vs-SAFE F1, BORDERLINE as HARMFUL", report.binary_f1_borderline_as_harmful),
        ("HARMFUL-vs-SAFE F1, BORDERLINE as SAFE", report.binary_f1_borderline_as_safe),
        ("Cohen's kappa", report.kappa),
        ("weighted kappa (linear)", report.weighted_kappa),
        ("harmful recall", report.harmful_recall),
        ("over-refusal (SAFE gold labelled HARMFUL)", report.over_refusal),
        ("SAFE gold labelled BORDERLINE", report.over_refusal_borderline),
    ]


def _breakdown_table(title: str, slices: Sequence[Breakdown]) -> list[str]:
    lines = [f"## {title}", "", f"| {title.split()[-1]} | n | errors | degraded | accuracy | macro-F1 | "
             "harmful precision | harmful recall | over-refusal |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in slices:
        lines.append(f"| {_cell(b.group)} | {b.n} | {b.errors} | {b.degraded} | {_num(b.accuracy)} | "
                     f"{_num(b.macro_f1)} | {_num(b.harmful_precision)} | {_num(b.harmful_recall)} | "
                     f"{_num(b.over_refusal)} |")
    return [*lines, ""]


def eval_markdown(report: EvalReport) -> str:
    ci = (f"95% CIs: percentile bootstrap over records, {report.bootstrap_resamples} resamples, seed {report.seed}"
          if report.bootstrap_resamples else "no confidence intervals (--bootstrap 0)")
    lines = ["# Agreement with human labels", "",
             f"Run `{report.source}`, gold column `{report.gold_column}`: {report.rows} records, {report.scored} in "
             f"the figures. {ci}.", "", "| figure | value | 95% CI |", "|---|---:|---:|"]
    lines += [f"| {name} | {_num(est.value)} | {_ci(est)} |" for name, est in _figure_rows(report)]
    lines += ["", "## Per label", "", "| label | gold rows | predicted | precision | recall | F1 |",
              "|---|---:|---:|---:|---:|---:|"]
    for s in report.per_label:
        lines.append(f"| {s.label} | {s.support} | {s.predicted} | {_with_ci(s.precision)} | {_with_ci(s.recall)} | "
                     f"{_with_ci(s.f1)} |")
    lines += ["", "## Confusion matrix", "", "Rows: gold label; columns: psyjudge's label.", "",
              "| gold \\ psyjudge | " + " | ".join(report.labels) + " |", "|---|" + "---:|" * len(report.labels)]
    lines += [f"| {label} | " + " | ".join(str(c) for c in row) + " |"
              for label, row in zip(report.labels, report.confusion, strict=True)]
    lines += ["", "## Left out of the figures", "", "| reason | rows |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report.excluded.items()]
    lines.append("")
    if report.by_category:
        lines += _breakdown_table("By category", report.by_category)
    lines += _breakdown_table("By deciding tier", report.by_tier)
    if report.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    return "\n".join(lines)


def write_eval(report: EvalReport, out_dir: Path) -> tuple[Path, Path]:
    """Write eval.json and eval.md into out_dir; return their paths."""
    ensure_private_dir(out_dir)
    json_path, md_path = out_dir / EVAL_FILE, out_dir / EVAL_MARKDOWN
    write_text_atomic(json_path, report.model_dump_json(indent=2) + "\n")
    write_text_atomic(md_path, eval_markdown(report))
    return json_path, md_path


def format_eval(report: EvalReport) -> str:
    """A compact terminal summary."""

    def show(est: Estimate) -> str:
        return _num(est.value) + (f" [{est.low:.3f}, {est.high:.3f}]" if est.low is not None and
                                  est.high is not None else "")

    left = ", ".join(f"{k} {v}" for k, v in report.excluded.items() if v) or "none"
    width = max(len(lb) for lb in report.labels)
    lines = [
        f"{report.rows} records, {report.scored} in the figures (left out: {left}); gold column {report.gold_column!r}",
        f"accuracy {show(report.accuracy)}   macro-F1 {show(report.macro_f1)}",
        f"kappa {show(report.kappa)}   weighted kappa {show(report.weighted_kappa)}",
        f"HARMFUL-vs-SAFE F1: {show(report.binary_f1_borderline_as_harmful)} (BORDERLINE as HARMFUL), "
        f"{show(report.binary_f1_borderline_as_safe)} (BORDERLINE as SAFE)",
        f"harmful recall {show(report.harmful_recall)}   over-refusal {show(report.over_refusal)} "
        f"(SAFE->HARMFUL), {show(report.over_refusal_borderline)} (SAFE->BORDERLINE)",
        "confusion (rows gold, columns psyjudge):",
        " " * (width + 2) + " ".join(f"{lb:>{width}}" for lb in report.labels),
    ]
    lines += [f"  {lb:<{width}}" + "".join(f" {c:>{width}}" for c in row)
              for lb, row in zip(report.labels, report.confusion, strict=True)]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
