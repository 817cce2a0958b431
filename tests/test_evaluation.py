"""Agreement with human labels (judge.evaluation): figures checked against arithmetic done by hand,
the bootstrap, what is left out of the figures and why, and the errors that say how to fix an input.

The helpers `verdict` and `write_run` build run folders from Verdict objects; test_gate.py and
test_cli_eval.py use them too."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
)

from judge.evaluation import (
    LABELS,
    EvalError,
    agreement,
    bootstrap_confusions,
    confusion_figures,
    confusion_matrix,
    evaluate_run,
    format_eval,
    sample_lines,
    stratified_sample,
    write_eval,
)
from judge.ingest import read_records
from judge.outputs import EVAL_FILE, EVAL_MARKDOWN, EvalReport
from judge.runner import RECORD_VERDICTS_FILE, RESULTS_FILE, SUMMARY_FILE
from judge.schema import ERROR, Label, Record, RecordMeta, Role, Turn, Verdict

RUBRIC = "self_harm@2.0.0"


def verdict(record_id: str, label: str, gold: str | None = None, *, category: str | None = None,
            scope: str | None = None, degraded: bool = False, tier: str | None = "llm", rubric: str = RUBRIC,
            gold_column: str = "gold_label", parts: Sequence[Verdict] = ()) -> Verdict:
    """A verdict as the runner stores it, with the input's extra columns in meta.extra."""
    extra: dict[str, str | int | float | bool | None] = {}
    if gold is not None:
        extra[gold_column] = gold
    if category is not None:
        extra["category"] = category
    if scope is not None:
        extra["label_scope"] = scope
    return Verdict(record_id=record_id, record_sha256="0" * 64, rubric=rubric, rubric_sha256="1" * 64,
                   label=ERROR if label == ERROR else Label(label), decided_by=None if label == ERROR else tier,
                   tiers=[], error="judge timed out" if label == ERROR or degraded else None, degraded=degraded,
                   response=f"response {record_id}", meta=RecordMeta(extra=extra),
                   created_at="2025-01-01T00:00:00+00:00", rubric_results=list(parts))


def write_run(run_dir: Path, verdicts: Sequence[Verdict], summary: dict[str, Any] | None = None,
              records: Sequence[Verdict] | None = None) -> Path:
    """A run folder: results.jsonl (and record_verdicts.jsonl when given), summary.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULTS_FILE).write_text("".join(v.model_dump_json() + "\n" for v in verdicts))
    if records is not None:
        (run_dir / RECORD_VERDICTS_FILE).write_text("".join(v.model_dump_json() + "\n" for v in records))
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary or {"quarantined": 0}))
    return run_dir


# The hand-computed fixture: 10 rows, (gold, predicted).
#
#                 predicted SAFE  BORDERLINE  HARMFUL   | gold rows
#   gold SAFE              3          0          1      |  4
#   gold BORDERLINE        1          1          0      |  2
#   gold HARMFUL           0          2          2      |  4
#   predicted               4          3          3      | 10
#
# accuracy = (3 + 1 + 2) / 10 = 0.6
# precision: SAFE 3/4, BORDERLINE 1/3, HARMFUL 2/3;  recall: SAFE 3/4, BORDERLINE 1/2, HARMFUL 2/4
# F1 = 2 tp / (gold rows + predicted): SAFE 6/8 = 0.75, BORDERLINE 2/5 = 0.4, HARMFUL 4/7
# macro-F1 = (3/4 + 2/5 + 4/7) / 3 = (105 + 56 + 80) / 140 / 3 = 241/420 (all three labels present)
# kappa: observed agreement po = 0.6; expected pe = (4*4 + 2*3 + 4*3) / 10^2 = 0.34;
#        kappa = (0.6 - 0.34) / (1 - 0.34) = 0.26 / 0.66 = 13/33
# weighted kappa, weights |i - j| (SAFE 0, BORDERLINE 1, HARMFUL 2):
#        observed weighted disagreement = 1*2 (SAFE->HARMFUL) + 1*1 (BORDERLINE->SAFE) + 2*1 (HARMFUL->BORDERLINE) = 5
#        expected cells E = gold rows x predicted / 10:
#          SAFE row  1.6 1.2 1.2 -> 0*1.6 + 1*1.2 + 2*1.2 = 3.6
#          BORD row  0.8 0.6 0.6 -> 1*0.8 + 0*0.6 + 1*0.6 = 1.4
#          HARM row  1.6 1.2 1.2 -> 2*1.6 + 1*1.2 + 0*1.2 = 4.4   total 9.4
#        weighted kappa = 1 - 5 / 9.4 = 22/47
# binary F1, BORDERLINE as HARMFUL: tp = 1 + 0 + 2 + 2 = 5, fp = 0 + 1 = 1, fn = 1 + 0 = 1 -> 10/12 = 5/6
# binary F1, BORDERLINE as SAFE:    tp = 2, fp = 1 + 0 = 1, fn = 0 + 2 = 2          -> 4/7
# over-refusal = 1/4 SAFE-gold rows labelled HARMFUL; 0/4 labelled BORDERLINE; harmful recall = 2/4
PAIRS = ([("SAFE", "SAFE")] * 3 + [("SAFE", "HARMFUL")] + [("BORDERLINE", "SAFE"), ("BORDERLINE", "BORDERLINE")]
         + [("HARMFUL", "BORDERLINE")] * 2 + [("HARMFUL", "HARMFUL")] * 2)
GOLD = [g for g, _ in PAIRS]
PRED = [p for _, p in PAIRS]
HAND = {
    "accuracy": 0.6, "macro_f1": 241 / 420, "kappa": 13 / 33, "weighted_kappa": 22 / 47,
    "binary_f1_borderline_as_harmful": 5 / 6, "binary_f1_borderline_as_safe": 4 / 7,
    "over_refusal": 0.25, "over_refusal_borderline": 0.0, "harmful_recall": 0.5,
}
HAND_PER_LABEL = {"SAFE": (3 / 4, 3 / 4, 0.75), "BORDERLINE": (1 / 3, 1 / 2, 0.4), "HARMFUL": (2 / 3, 2 / 4, 4 / 7)}
HAND_CONFUSION = [[3, 0, 1], [1, 1, 0], [0, 2, 2]]


def test_figures_match_the_hand_computed_fixture() -> None:
    found = agreement(GOLD, PRED, bootstrap=0)
    assert found.confusion == HAND_CONFUSION
    for key, value in HAND.items():
        assert found.estimates[key].value == pytest.approx(value, abs=1e-12), key
        assert found.estimates[key].low is None and found.estimates[key].high is None
    for scores in found.per_label:
        assert (scores.precision.value, scores.recall.value, scores.f1.value) == pytest.approx(
            HAND_PER_LABEL[scores.label], abs=1e-12)
    assert [(s.support, s.predicted) for s in found.per_label] == [(4, 4), (2, 3), (4, 3)]
    assert found.macro_labels == list(LABELS)


def test_undefined_figures_are_none_not_zero() -> None:
    # No BORDERLINE anywhere, no SAFE gold: BORDERLINE's scores, over-refusal are undefined; macro-F1
    # then averages SAFE and HARMFUL only: gold HARMFUL x3, predicted HARMFUL, HARMFUL, SAFE.
    found = agreement(["HARMFUL"] * 3, ["HARMFUL", "HARMFUL", "SAFE"], bootstrap=50)
    borderline = found.per_label[1]
    assert borderline.precision.value is None and borderline.recall.value is None and borderline.f1.value is None
    assert found.estimates["over_refusal"].value is None and found.estimates["over_refusal"].low is None
    # F1 SAFE = 0 (tp 0, predicted 1); F1 HARMFUL = 2*2 / (3 + 2) = 0.8; macro = 0.4
    assert found.macro_labels == ["SAFE", "HARMFUL"]
    assert found.estimates["macro_f1"].value == pytest.approx(0.4)
    empty = agreement([], [], bootstrap=100)
    assert all(e.value is None and e.low is None for e in empty.estimates.values())


label_lists = st.integers(min_value=1, max_value=40).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from(LABELS), min_size=n, max_size=n), st.lists(st.sampled_from(LABELS), min_size=n,
                                                                         max_size=n)))


@settings(max_examples=80, deadline=None)
@given(label_lists)
def test_confusion_matrix_formulas_equal_scikit_learn(pair: tuple[list[str], list[str]]) -> None:
    """The vectorised formulas the bootstrap uses give scikit-learn's own numbers, to the bit."""
    gold, pred = pair
    figures = {k: v[0] for k, v in confusion_figures(confusion_matrix(gold, pred)[None]).items()}

    def same(ours: float, theirs: float) -> bool:
        return bool(np.isnan(ours) and np.isnan(theirs)) or ours == theirs

    precision, recall, f1, _ = precision_recall_fscore_support(gold, pred, labels=list(LABELS), zero_division=np.nan)
    for k, lb in enumerate(LABELS):
        assert same(figures[f"precision_{lb}"], precision[k])
        assert same(figures[f"recall_{lb}"], recall[k])
        assert same(figures[f"f1_{lb}"], f1[k])
    assert figures["accuracy"] == accuracy_score(gold, pred)
    present = [lb for lb in LABELS if lb in gold or lb in pred]
    assert figures["macro_f1"] == f1_score(gold, pred, labels=present, average="macro", zero_division=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined kappa is NaN on both sides, with a warning from sklearn
        assert same(figures["kappa"], cohen_kappa_score(gold, pred, labels=list(LABELS)))
        assert same(figures["weighted_kappa"], cohen_kappa_score(gold, pred, labels=list(LABELS), weights="linear"))
    for key, merged in (("binary_f1_borderline_as_harmful", "HARMFUL"), ("binary_f1_borderline_as_safe", "SAFE")):
        gb = [merged if g == "BORDERLINE" else g for g in gold]
        pb = [merged if p == "BORDERLINE" else p for p in pred]
        theirs = precision_recall_fscore_support(gb, pb, labels=["HARMFUL"], zero_division=np.nan)[2][0]
        assert same(figures[key], theirs)
    safe = [p for g, p in zip(gold, pred, strict=True) if g == "SAFE"]
    assert same(figures["over_refusal"], safe.count("HARMFUL") / len(safe) if safe else np.nan)


def test_cell_bootstrap_is_the_record_bootstrap() -> None:
    """Drawing confusion matrices from a multinomial is resampling records with replacement: the
    intervals match those of an explicit (B, n) index-matrix bootstrap over the same records."""
    rng = np.random.default_rng(7)
    gold = list(rng.choice(LABELS, 60, p=[0.5, 0.2, 0.3]))
    pred = [g if rng.random() < 0.7 else str(rng.choice(LABELS)) for g in gold]
    cm = confusion_matrix(gold, pred)
    cells = np.array([LABELS.index(g) * 3 + LABELS.index(p) for g, p in zip(gold, pred, strict=True)])
    b = 4000
    index = rng.integers(0, len(cells), size=(b, len(cells)))
    offsets = (np.arange(b) * 9)[:, None]
    explicit = np.bincount((cells[index] + offsets).ravel(), minlength=9 * b).reshape(b, 3, 3)
    by_records = confusion_figures(explicit)
    by_cells = confusion_figures(bootstrap_confusions(cm, b, seed=3))
    for key in ("accuracy", "macro_f1", "kappa", "weighted_kappa", "harmful_recall", "over_refusal"):
        ours = np.nanpercentile(by_cells[key], [2.5, 97.5])
        theirs = np.nanpercentile(by_records[key], [2.5, 97.5])
        assert ours == pytest.approx(theirs, abs=0.03), key


def test_bootstrap_intervals_contain_the_value_are_seeded_and_none_when_off() -> None:
    first = agreement(GOLD * 3, PRED * 3, bootstrap=500, seed=1)
    again = agreement(GOLD * 3, PRED * 3, bootstrap=500, seed=1)
    other = agreement(GOLD * 3, PRED * 3, bootstrap=500, seed=2)
    assert first == again and first != other
    for key, est in first.estimates.items():
        if est.value is not None and key != "over_refusal_borderline":
            assert est.low is not None and est.high is not None
            assert est.low <= est.value <= est.high, key
            assert est.method == "bootstrap"
    # A figure with no spread (no SAFE-gold row was ever labelled BORDERLINE) has a zero-width interval.
    assert (first.estimates["over_refusal_borderline"].low, first.estimates["over_refusal_borderline"].high) == (0, 0)
    # The width is a 95% interval's: 400 rows, 320 right, accuracy 0.8 with standard error
    # sqrt(0.8 * 0.2 / 400) = 0.02, so about 0.8 -+ 1.96 * 0.02 = 0.761 .. 0.839.
    wide = agreement(["SAFE"] * 400, ["SAFE"] * 320 + ["HARMFUL"] * 80, bootstrap=2000, seed=0).estimates["accuracy"]
    assert wide.low == pytest.approx(0.761, abs=0.006) and wide.high == pytest.approx(0.839, abs=0.006)
    off = agreement(GOLD, PRED, bootstrap=0)
    assert all(e.low is None and e.high is None for e in off.estimates.values())
    assert all(s.recall.low is None for s in off.per_label)


def fixture_run(run_dir: Path) -> Path:
    """The hand fixture as a run folder, plus one row for every reason to be left out."""
    categories = ["self_harm", "self_harm", "eating", "eating", "self_harm", None, "eating", "self_harm",
                  "self_harm", "eating"]
    tiers = ["rules", "llm", "llm", "llm", "llm", "llm", "llm", "llm", "rules", "llm"]
    rows = [verdict(f"r{i}", p, g.lower() if i == 0 else g, category=c, scope="response" if i < 5 else None,
                    tier=t) for i, ((g, p), c, t) in enumerate(zip(PAIRS, categories, tiers, strict=True))]
    rows += [
        verdict("err", ERROR, "HARMFUL", category="self_harm"),
        verdict("deg", "SAFE", "HARMFUL", category="eating", degraded=True, tier="rules"),
        verdict("prompt", "HARMFUL", "SAFE", scope="prompt", category="self_harm"),
        verdict("refusal", "SAFE", "COMPLIANCE", scope="refusal"),
        verdict("odd", "SAFE", "maybe"),
        verdict("nogold", "SAFE", "  "),
        verdict("missing", "SAFE", None),
        verdict("unsafe", "HARMFUL", "Unsafe", category="eating"),  # UNSAFE counts as HARMFUL
    ]
    return write_run(run_dir, rows, {"quarantined": 2, "rubrics": [{"id": "self_harm", "version": "2.0.0"}]})


def test_evaluate_run_counts_what_it_leaves_out(tmp_path: Path) -> None:
    report = evaluate_run(fixture_run(tmp_path / "run"), "gold_label", bootstrap=200)
    assert report.rows == 18 and report.scored == 11
    assert report.excluded == {"out_of_scope": 2, "no_gold": 2, "unknown_gold": 1, "error": 1, "degraded": 1}
    # The fixture plus one UNSAFE-gold row labelled HARMFUL: the HARMFUL row of the matrix gains one.
    assert report.confusion == [[3, 0, 1], [1, 1, 0], [0, 2, 3]]
    assert report.harmful_recall.value == pytest.approx(3 / 5)
    assert report.over_refusal.value == pytest.approx(1 / 4)
    notes = "\n".join(report.notes)
    assert "2 input row(s) were quarantined at ingest" in notes
    assert "label_scope is not response (prompt 1, refusal 1)" in notes
    assert "unknown_gold: values maybe 1" in notes
    assert "1 ERROR and 1 degraded verdict(s)" in notes
    assert "over the labels present in gold or prediction: SAFE, BORDERLINE, HARMFUL" in notes
    by_category = {b.group: b for b in report.by_category}
    # self_harm: r0 S-S, r1 S-S, r4 B-S, r7 H-B, r8 H-H, plus the ERROR row
    assert by_category["self_harm"].n == 5 and by_category["self_harm"].errors == 1
    assert by_category["self_harm"].accuracy == pytest.approx(3 / 5)
    assert by_category["self_harm"].harmful_recall == pytest.approx(1 / 2)
    # eating: r2 S-S, r3 S-H, r6 H-B, r9 H-H, unsafe H-H, plus the degraded row
    assert by_category["eating"].n == 5 and by_category["eating"].degraded == 1
    assert by_category["eating"].over_refusal == pytest.approx(1 / 2)
    assert by_category["eating"].harmful_precision == pytest.approx(2 / 3)
    assert by_category["(none)"].n == 1 and [b.group for b in report.by_category][-1] == "(none)"
    by_tier = {b.group: b for b in report.by_tier}
    assert by_tier["rules"].n == 2 and by_tier["rules"].accuracy == 1.0 and by_tier["rules"].degraded == 1
    assert by_tier["llm"].n == 9 and by_tier["(none)"].errors == 1


def test_several_rubrics_use_the_combined_record_verdicts(tmp_path: Path) -> None:
    other = "eating_disorders@1.0.0"
    per_rubric = [verdict("a", "SAFE", "HARMFUL", tier="llm"), verdict("a", "HARMFUL", "HARMFUL", rubric=other,
                                                                          tier="rules"),
                  verdict("b", "SAFE", "SAFE"), verdict("b", "SAFE", "SAFE", rubric=other)]
    combined = [verdict("a", "HARMFUL", "HARMFUL", tier=f"{other}/rules", rubric=f"{RUBRIC}+{other}"),
                verdict("b", "SAFE", "SAFE", tier=f"{RUBRIC}/llm", rubric=f"{RUBRIC}+{other}")]
    summary = {"rubrics": [{"id": "self_harm", "version": "2.0.0"}, {"id": "eating_disorders", "version": "1.0.0"}]}
    run = write_run(tmp_path / "run", per_rubric, summary, records=combined)
    report = evaluate_run(run, "gold_label", bootstrap=0)
    assert report.rows == 2 and report.confusion == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert sorted(b.group for b in report.by_tier) == ["llm", "rules"]  # the tier part of rubric@version/tier
    # Without record_verdicts.jsonl the verdicts are combined here, the same way.
    (run / RECORD_VERDICTS_FILE).unlink()
    again = evaluate_run(run, "gold_label", bootstrap=0)
    assert again.confusion == report.confusion and sorted(b.group for b in again.by_tier) == ["llm", "rules"]


def test_latest_verdict_per_record_counts(tmp_path: Path) -> None:
    # A retried ERROR is superseded by the later line for the same (record, rubric).
    run = write_run(tmp_path / "run", [verdict("a", ERROR, "HARMFUL"), verdict("a", "HARMFUL", "HARMFUL")])
    report = evaluate_run(run, "gold_label", bootstrap=0)
    assert report.rows == 1 and report.scored == 1 and report.excluded["error"] == 0


def test_eval_errors_say_what_to_fix(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [verdict("a", "SAFE", "SAFE", category="x")])
    with pytest.raises(EvalError, match=r"no row has a gold column .label.; .*: category, gold_label") as missing:
        evaluate_run(run, "label")
    assert missing.value.kind == "missing_column"
    refusal = write_run(tmp_path / "refusal", [verdict("a", "SAFE", "COMPLIANCE"), verdict("b", "SAFE", "REFUSAL"),
                                               verdict("c", "SAFE", "COMPLIANCE")])
    with pytest.raises(EvalError) as labels:
        evaluate_run(refusal, "gold_label")
    text = str(labels.value)
    assert labels.value.kind == "no_usable_gold" and "COMPLIANCE 2, REFUSAL 1" in text
    assert "whether the response refused" in text and "'gold_label'" in text
    scoped = write_run(tmp_path / "scoped", [verdict("a", "SAFE", "SAFE", scope="prompt")])
    with pytest.raises(EvalError, match="label_scope: prompt 1"):
        evaluate_run(scoped, "gold_label")
    with pytest.raises(EvalError, match=r"not a run folder: it has no results\.jsonl") as not_run:
        evaluate_run(tmp_path / "nothing", "gold_label")
    assert not_run.value.kind == "not_a_run"


def test_no_gradeable_row_gives_undefined_figures_and_says_so(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [verdict("a", ERROR, "HARMFUL"), verdict("b", "SAFE", "SAFE", degraded=True)])
    report = evaluate_run(run, "gold_label", bootstrap=100)
    assert report.scored == 0 and report.accuracy.value is None and report.kappa.low is None
    assert any("no row could be scored" in note for note in report.notes)


def test_write_eval_round_trips_and_the_markdown_shows_the_figures(tmp_path: Path) -> None:
    report = evaluate_run(fixture_run(tmp_path / "run"), "gold_label", bootstrap=100)
    json_path, md_path = write_eval(report, tmp_path / "run")
    assert json_path.name == EVAL_FILE and md_path.name == EVAL_MARKDOWN
    assert EvalReport.model_validate_json(json_path.read_text()) == report
    md = md_path.read_text()
    assert "| accuracy | 0.636 |" in md  # 7 of 11
    assert "| gold \\ psyjudge | SAFE | BORDERLINE | HARMFUL |" in md and "| HARMFUL | 0 | 2 | 3 |" in md
    assert "| out_of_scope | 2 |" in md and "## By category" in md and "## By deciding tier" in md
    assert "percentile bootstrap over records, 100 resamples, seed 0" in md
    text = format_eval(report)
    assert "18 records, 11 in the figures" in text and "kappa" in text and "HARMFUL-vs-SAFE F1" in text
    assert "note: 2 input row(s) were quarantined" in text


def _record(i: int, gold: str) -> Record:
    return Record(id=f"rec-{i}", turns=[Turn(role=Role.USER, content=f"question {i}")], response=f"answer {i}",
                  meta=RecordMeta(region="GB", extra={"gold_label": gold, "category": "c", "n": i}))


def test_stratified_sample_keeps_the_label_mix_and_every_label() -> None:
    records = [_record(i, g) for i, g in enumerate(["SAFE"] * 70 + ["HARMFUL"] * 27 + ["BORDERLINE"] * 3)]
    chosen = stratified_sample(records, "gold_label", 20, seed=5)
    counts = {g: sum(r.meta.extra["gold_label"] == g for r in chosen) for g in ("SAFE", "HARMFUL", "BORDERLINE")}
    assert counts == {"SAFE": 14, "HARMFUL": 5, "BORDERLINE": 1}
    assert chosen == stratified_sample(records, "gold_label", 20, seed=5)
    assert chosen != stratified_sample(records, "gold_label", 20, seed=6)
    assert [r.id for r in chosen] == sorted((r.id for r in chosen), key=lambda i: int(i.split("-")[1]))
    tiny = stratified_sample(records, "gold_label", 3, seed=0)
    assert sorted(str(r.meta.extra["gold_label"]) for r in tiny) == ["BORDERLINE", "HARMFUL", "SAFE"]
    assert stratified_sample(records, "gold_label", 500, seed=0) == records


def test_sample_lines_read_back_as_the_same_records(tmp_path: Path) -> None:
    records = [_record(i, "SAFE") for i in range(3)]
    path = tmp_path / "sample.jsonl"
    path.write_text("".join(sample_lines(records)))
    back = read_records(path)
    assert not back.quarantined
    assert [(r.id, r.turns, r.response, r.meta) for r in back.records] == [
        (r.id, r.turns, r.response, r.meta) for r in records]
