"""Calibration of the classifier tier's probabilities and the cutoffs at which it may decide."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from judge.classifier.calibration import (
    Calibration,
    IsotonicCurve,
    Thresholds,
    choose_thresholds,
    coverage_report,
    decide,
    fit_calibration,
    softmax,
    wilson_lower,
)
from judge.metrics import reliability_table

LABELS = ["SAFE", "BORDERLINE", "HARMFUL"]
SAFE, BORDERLINE, HARMFUL = 0, 1, 2


def sample(n: int, seed: int, scale: float = 1.5) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """True logits and labels drawn from softmax(true logits): softmax of these logits is calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n, 3))
    cdf = np.cumsum(softmax(logits), axis=1)
    y = (rng.random(n)[:, None] > cdf).sum(axis=1).astype(np.int64)
    return logits, np.minimum(y, 2)


def nll(probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    # Floored as the module floors it: isotonic curves can give a class exactly 0 on rows they never saw.
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))))


# --- softmax and fitting ---------------------------------------------------------------------------

def test_softmax_is_stable_and_normalised() -> None:
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(p[2], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())


def test_temperature_recovers_known_overconfidence() -> None:
    logits, y = sample(5000, seed=0)
    cal = fit_calibration(logits * 3, y)  # temperature is the default
    assert cal.method == "temperature" and cal.temperature is not None
    assert cal.temperature == pytest.approx(3.0, rel=0.15)
    assert cal.fitted_on == 5000
    assert cal.nll_after is not None and cal.nll_before is not None and cal.nll_after < cal.nll_before
    assert cal.ece_after is not None and cal.ece_before is not None and cal.ece_after < cal.ece_before / 2
    # Dividing by one temperature never changes which label is on top.
    np.testing.assert_array_equal(cal.apply(logits * 3).argmax(axis=1), logits.argmax(axis=1))


def test_isotonic_improves_and_round_trips_through_json() -> None:
    logits, y = sample(5000, seed=1)
    cal = fit_calibration(logits * 3, y, method="isotonic")
    assert cal.curves is not None and len(cal.curves) == 3 and cal.temperature is None
    probs = cal.apply(logits * 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert cal.nll_after is not None and cal.nll_before is not None and cal.nll_after < cal.nll_before
    assert cal.ece_after is not None and cal.ece_before is not None and cal.ece_after < cal.ece_before / 2
    # Fresh rows from the same generator: the improvement is not only in-sample.
    fresh, fresh_y = sample(5000, seed=2)
    assert nll(cal.apply(fresh * 3), fresh_y) < nll(softmax(fresh * 3), fresh_y)
    assert reliability_table(cal.apply(fresh * 3), fresh_y)[1] < reliability_table(softmax(fresh * 3), fresh_y)[1] / 2
    loaded = Calibration.model_validate_json(cal.model_dump_json())
    np.testing.assert_array_equal(loaded.apply(fresh * 3), cal.apply(fresh * 3))


def test_isotonic_row_mapped_to_zero_keeps_its_softmax() -> None:
    flat = IsotonicCurve(x=[0.0, 1.0], y=[0.0, 0.0])
    rising = IsotonicCurve(x=[0.0, 0.6, 1.0], y=[0.0, 0.0, 1.0])
    cal = Calibration(method="isotonic", curves=[flat, rising])
    logits = np.array([[0.0, 0.0], [-3.0, 3.0]])
    probs = cal.apply(logits)
    np.testing.assert_allclose(probs[0], [0.5, 0.5])  # every curve gives 0 here: the uncalibrated softmax
    np.testing.assert_allclose(probs[1], [0.0, 1.0])


def test_none_returns_softmax_unchanged() -> None:
    logits, y = sample(500, seed=3)
    cal = fit_calibration(logits, y, method="none")
    np.testing.assert_array_equal(cal.apply(logits), softmax(logits))
    assert cal.nll_before == cal.nll_after and cal.ece_before == cal.ece_after
    assert cal.temperature is None and cal.curves is None


@pytest.mark.parametrize("curve", [
    {"x": [0.5, 0.2], "y": [0.0, 1.0]},  # x decreasing
    {"x": [0.1, 0.5, 0.9], "y": [0.0, 1.0]},  # length mismatch
    {"x": [], "y": []},
    {"x": [0.1, 0.9], "y": [0.8, 0.2]},  # y decreasing would invert the ranking
    {"x": [0.1, 0.9], "y": [0.0, 1.5]},
])
def test_broken_curve_in_a_manifest_is_a_clear_error(curve: dict[str, list[float]]) -> None:
    good = {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    manifest = json.dumps({"method": "isotonic", "curves": [good, curve]})
    with pytest.raises(ValidationError, match="isotonic curve"):
        Calibration.model_validate_json(manifest)


@pytest.mark.parametrize(("fields", "message"), [
    ({"method": "temperature"}, "finite temperature > 0"),
    ({"method": "temperature", "temperature": -1.0}, "finite temperature > 0"),
    ({"method": "none", "temperature": 2.0}, "only used by method 'temperature'"),
    ({"method": "isotonic"}, "one curve per class"),
    ({"method": "platt"}, "method"),
    ({"method": "none", "temprature": 2.0}, "temprature"),
])
def test_inconsistent_calibration_is_rejected(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Calibration.model_validate(fields)


def test_fit_rejects_bad_input() -> None:
    logits, y = sample(100, seed=4)
    with pytest.raises(ValueError, match="expected one of none, temperature, isotonic"):
        fit_calibration(logits, y, method="platt")
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_calibration(logits, np.zeros(100, dtype=np.int64))
    with pytest.raises(ValueError, match="zero rows"):
        fit_calibration(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(100,\)"):
        fit_calibration(logits, y[:99])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        fit_calibration(logits, np.where(y == 0, 3, y))
    with pytest.raises(ValueError, match="NaN"):
        fit_calibration(np.where(logits > 2, np.nan, logits), y)
    cal = fit_calibration(logits, y, method="isotonic")
    with pytest.raises(ValueError, match="fitted on 3"):
        cal.apply(logits[:, :2])


# --- thresholds ------------------------------------------------------------------------------------

def fitting_data() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    logits, y = sample(5000, seed=10)
    return softmax(logits), y


def test_chosen_threshold_meets_target_on_fitting_data() -> None:
    probs, y = fitting_data()
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.9}, min_support=5)
    pred, conf, decided = decide(probs, LABELS, th.threshold)
    for label in ("SAFE", "HARMFUL"):
        j = LABELS.index(label)
        mine = decided & (pred == j)
        cut, precision, lower = th.threshold[label], th.precision[label], th.precision_lower[label]
        assert cut is not None and precision is not None and lower is not None
        assert mine.sum() == th.support[label] >= 5
        assert (y[mine] == j).mean() == precision >= 0.9
        assert lower < precision
        # Smallest qualifying cutoff: one step lower (the next occurring confidence) misses the target.
        below = conf[(pred == j) & (conf < cut)]
        if below.size:
            widened = (pred == j) & (conf >= below.max())
            assert (y[widened] == j).mean() < 0.9
    assert th.coverage == decided.mean()
    assert th.threshold["BORDERLINE"] is None and "BORDERLINE" not in th.unreachable
    assert th.unreachable == []


def test_higher_target_means_higher_cutoff_less_coverage_more_precision() -> None:
    probs, y = fitting_data()
    fits = [choose_thresholds(probs, y, LABELS, {"SAFE": t, "HARMFUL": t}) for t in (0.7, 0.8, 0.9, 0.95)]
    for lo, hi in itertools.pairwise(fits):
        assert hi.coverage <= lo.coverage
        for label in ("SAFE", "HARMFUL"):
            lo_cut, hi_cut = lo.threshold[label], hi.threshold[label]
            lo_prec, hi_prec = lo.precision[label], hi.precision[label]
            assert lo_cut is not None and hi_cut is not None and hi_cut >= lo_cut
            assert lo_prec is not None and hi_prec is not None and hi_prec >= lo_prec
        lo_acc = coverage_report(probs, y, LABELS, lo.threshold)["accuracy_decided"]
        hi_acc = coverage_report(probs, y, LABELS, hi.threshold)["accuracy_decided"]
        assert hi_acc >= lo_acc
    assert fits[-1].coverage < fits[0].coverage  # not all equal: the targets did bite


def test_cutoffs_generalise_to_a_fresh_sample() -> None:
    probs, y = fitting_data()
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.9})
    fresh_logits, fresh_y = sample(20_000, seed=11)
    fresh = softmax(fresh_logits)
    report = coverage_report(fresh, fresh_y, LABELS, th.threshold)
    # Chosen on 5000 rows as the lowest cutoff that clears 0.9, it lands near 0.9 on new rows.
    assert report["accuracy_decided"] > 0.87
    coverages, precisions = [], []
    for cut in (0.6, 0.75, 0.85, 0.9, 0.95):
        r = coverage_report(fresh, fresh_y, LABELS, {"SAFE": cut, "HARMFUL": cut})
        coverages.append(r["coverage"])
        precisions.append(r["accuracy_decided"])
    assert coverages == sorted(coverages, reverse=True) and len(set(coverages)) == len(coverages)
    assert precisions == sorted(precisions) and len(set(precisions)) == len(precisions)


def test_the_wilson_bound_is_the_conservative_choice() -> None:
    probs, y = fitting_data()
    point = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.9})
    wilson = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.9}, bound="wilson")
    assert wilson.bound == "wilson" and wilson.coverage < point.coverage
    for label in ("SAFE", "HARMFUL"):
        w_cut, p_cut, lower = wilson.threshold[label], point.threshold[label], wilson.precision_lower[label]
        assert w_cut is not None and p_cut is not None and lower is not None
        assert w_cut >= p_cut and lower >= 0.9  # the bound itself clears the target
    # On few rows even a perfect record cannot show 0.95 with 95% confidence: nothing is decided.
    few = choose_thresholds(probs[:40], y[:40], LABELS, {"SAFE": 0.95, "HARMFUL": 0.95}, bound="wilson")
    assert few.coverage == 0.0 and set(few.unreachable) == {"SAFE", "HARMFUL"}


def test_impossible_target_is_unreachable_and_never_decides() -> None:
    # Every SAFE prediction's cutoff includes the most confident row, and that row is wrong.
    conf = np.linspace(0.99, 0.6, 40)
    probs = np.column_stack([conf, (1 - conf) / 2, (1 - conf) / 2])
    y = np.full(40, SAFE, dtype=np.int64)
    y[0] = HARMFUL
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 1.0})
    assert th.unreachable == ["SAFE"]
    assert th.threshold["SAFE"] is None and th.support["SAFE"] == 0 and th.precision["SAFE"] is None
    _, _, decided = decide(probs, LABELS, th.threshold)
    assert not decided.any() and th.coverage == 0.0
    # The same target with the wrong row gone is met: the refusal above came from that row.
    assert choose_thresholds(probs[1:], y[1:], LABELS, {"SAFE": 1.0}).threshold["SAFE"] == pytest.approx(0.6)
    # A targeted label the model never predicts has no cutoff with support: unreachable as well.
    assert choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.5}).unreachable == ["HARMFUL"]


def test_noisy_data_cannot_reach_perfect_precision() -> None:
    probs, y = fitting_data()
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 1.0, "HARMFUL": 0.9}, min_support=50)
    assert "SAFE" in th.unreachable and th.threshold["SAFE"] is None
    pred, _, decided = decide(probs, LABELS, th.threshold)
    assert not (decided & (pred == SAFE)).any()
    assert (decided & (pred == HARMFUL)).any()


def test_tied_confidences_are_one_cutoff() -> None:
    # Four right at 0.95, then four tied at 0.9 of which only the first listed is right. Cutting inside the
    # tie would report 5/5 at 0.9, but decide() at 0.9 takes all eight (5/8): the cutoff must stay at 0.95.
    conf = np.array([0.95] * 4 + [0.9] * 4)
    probs = np.column_stack([conf, 1 - conf, np.zeros(8)])
    y = np.array([SAFE] * 5 + [HARMFUL] * 3, dtype=np.int64)
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.8}, min_support=1)
    assert th.threshold["SAFE"] == 0.95 and th.support["SAFE"] == 4 and th.precision["SAFE"] == 1.0
    # The whole tie qualifies once the target allows 5/8.
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.6}, min_support=1)
    assert th.threshold["SAFE"] == 0.9 and th.support["SAFE"] == 8
    _, _, decided = decide(probs, LABELS, th.threshold)
    assert decided.sum() == 8


def test_min_support_holds_back_a_tiny_perfect_set() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.9, 0.89, 0.88, 0.87, 0.86, 0.85, 0.84])
    probs = np.column_stack([conf, 1 - conf, np.zeros(10)])
    y = np.array([SAFE] * 3 + [BORDERLINE] + [SAFE] * 6, dtype=np.int64)
    # Only the top three rows (3/3) reach 0.95; every cutoff with five or more rows is at most 9/10.
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.95}, min_support=5)
    assert th.unreachable == ["SAFE"] and th.threshold["SAFE"] is None
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.95}, min_support=3)
    assert th.threshold["SAFE"] == 0.97 and th.support["SAFE"] == 3
    # 0.89 (4/5) already clears 0.8, but the smallest cutoff that does is wanted: 0.84 (9/10).
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.8}, min_support=5)
    assert th.threshold["SAFE"] == 0.84 and th.support["SAFE"] == 10 and th.precision["SAFE"] == 0.9


def test_labels_without_target_never_decide() -> None:
    probs = np.array([[0.0, 1.0, 0.0], [0.0, 0.999, 0.001], [1.0, 0.0, 0.0]])
    y = np.array([BORDERLINE, BORDERLINE, SAFE], dtype=np.int64)
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9}, min_support=1)
    assert th.threshold == {"SAFE": 1.0, "BORDERLINE": None, "HARMFUL": None}
    assert th.unreachable == []
    pred, _, decided = decide(probs, LABELS, th.threshold)
    assert pred.tolist() == [BORDERLINE, BORDERLINE, SAFE] and decided.tolist() == [False, False, True]
    # A label left out of the mapping abstains too; it does not fall back to deciding.
    assert decide(probs, LABELS, {"SAFE": 0.5})[2].tolist() == [False, False, True]


def test_thresholds_round_trip_and_validate() -> None:
    probs, y = fitting_data()
    th = choose_thresholds(probs, y, LABELS, {"SAFE": 0.9, "HARMFUL": 0.95})
    assert Thresholds.model_validate_json(th.model_dump_json()) == th
    bad = th.model_dump()
    bad["targets"]["SAFE"] = 1.5
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        Thresholds.model_validate(bad)
    bad = th.model_dump()
    del bad["support"]["HARMFUL"]
    with pytest.raises(ValidationError, match="support must name the same labels"):
        Thresholds.model_validate(bad)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"targets": {"SAFE": 0.0}}, r"must be in \(0, 1\]"),
    ({"targets": {"SAFE": 1.2}}, r"must be in \(0, 1\]"),
    ({"targets": {"SAFE": math.nan}}, r"must be in \(0, 1\]"),
    ({"targets": {"HARMLESS": 0.9}}, "unknown label 'HARMLESS'"),
    ({"labels": ["SAFE", "HARMFUL"]}, "3 columns but 2 labels"),
    ({"labels": ["SAFE", "SAFE", "HARMFUL"]}, "unique"),
    ({"y": np.array([0, 1])}, r"shape \(3,\)"),
    ({"y": np.array([0.0, 1.0, 2.0])}, "integer"),
    ({"probs": np.array([[2.0, 1.0, 0.5]] * 3)}, "summing to 1"),
    ({"min_support": 0}, "min_support"),
])
def test_choose_thresholds_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "probs": np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]),
        "y": np.array([0, 1, 2]), "labels": LABELS, "targets": {"SAFE": 0.9},
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        choose_thresholds(**args)  # type: ignore[arg-type]


def test_decide_rejects_bad_thresholds() -> None:
    probs = np.array([[0.8, 0.1, 0.1]])
    with pytest.raises(ValueError, match="unknown labels"):
        decide(probs, LABELS, {"HARMLESS": 0.5})
    with pytest.raises(ValueError, match="within"):
        decide(probs, LABELS, {"SAFE": 1.5})


# --- decide, coverage report, reliability ----------------------------------------------------------

def test_decide_and_coverage_report_on_a_hand_example() -> None:
    probs = np.array([
        [0.90, 0.05, 0.05],  # SAFE 0.90, decided, gold SAFE
        [0.85, 0.10, 0.05],  # SAFE 0.85, decided, gold HARMFUL (wrong)
        [0.70, 0.20, 0.10],  # SAFE 0.70, below 0.8: abstain
        [0.10, 0.80, 0.10],  # BORDERLINE: never decides
        [0.05, 0.15, 0.80],  # HARMFUL 0.80, decided, gold HARMFUL
        [0.20, 0.20, 0.60],  # HARMFUL 0.60 below 0.7: abstain, gold HARMFUL
    ])
    y = np.array([SAFE, HARMFUL, SAFE, BORDERLINE, HARMFUL, HARMFUL], dtype=np.int64)
    threshold = {"SAFE": 0.8, "BORDERLINE": None, "HARMFUL": 0.7}
    pred, conf, decided = decide(probs, LABELS, threshold)
    assert pred.tolist() == [0, 0, 0, 1, 2, 2]
    np.testing.assert_allclose(conf, [0.9, 0.85, 0.7, 0.8, 0.8, 0.6])
    assert decided.tolist() == [True, True, False, False, True, False]
    report = coverage_report(probs, y, LABELS, threshold)
    assert report["rows"] == 6 and report["decided"] == 3 and report["coverage"] == 0.5
    assert report["accuracy_decided"] == pytest.approx(2 / 3)
    assert report["accuracy_all"] == pytest.approx(5 / 6)  # the argmax is wrong on row 1 only
    labels = report["labels"]
    assert labels["SAFE"] == {"gold": 2, "decided": 2, "correct": 1, "precision": 0.5,
                              "precision_lower": wilson_lower(1, 2), "recall": 0.5}
    assert labels["BORDERLINE"] == {"gold": 1, "decided": 0, "correct": 0, "precision": None,
                                    "precision_lower": None, "recall": 0.0}
    assert labels["HARMFUL"]["decided"] == 1 and labels["HARMFUL"]["precision"] == 1.0
    assert labels["HARMFUL"]["recall"] == pytest.approx(1 / 3)
    # Plain JSON types, so the report can be written straight into a manifest or results file.
    assert json.loads(json.dumps(report)) == report


def test_reliability_table_counts_and_exact_ece() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65], [0.5, 0.5], [1.0, 0.0]])
    y = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    table, ece = reliability_table(probs, y, bins=10)
    assert list(table.columns) == ["bin", "low", "high", "count", "mean_confidence", "accuracy", "gap"]
    assert table["bin"].iloc[-1] == "0.9-1.0" and table["bin"].iloc[5] == "0.5-0.6"
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 1, 2, 0, 0, 3]
    # Row 4 ties: argmax takes class 0, gold is 1, so it is wrong at confidence 0.5.
    last = table.iloc[9]
    assert last["mean_confidence"] == pytest.approx((0.95 + 0.95 + 1.0) / 3)
    assert last["accuracy"] == pytest.approx(2 / 3)
    assert table.iloc[0][["mean_confidence", "accuracy", "gap"]].isna().all()
    # |0 - 0.5| * 1 + |1 - 0.65| * 2 + |2/3 - 2.9/3| * 3, over 6 rows
    assert ece == pytest.approx((0.5 + 0.7 + 0.9) / 6, abs=1e-12)


def test_reliability_table_is_small_for_calibrated_probabilities() -> None:
    logits, y = sample(50_000, seed=20)
    table, ece = reliability_table(softmax(logits), y)
    assert table["count"].sum() == 50_000
    assert ece < 0.01
    _, ece_over = reliability_table(softmax(logits * 3), y)
    assert ece_over > 0.1


def test_reliability_table_labels_other_bin_counts() -> None:
    probs = np.array([[0.3, 0.7], [0.25, 0.75]])
    table, _ = reliability_table(probs, np.array([1, 0]), bins=4)
    assert table["bin"].tolist() == ["0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00"]
    assert table["count"].tolist() == [0, 0, 1, 1]  # 0.75 opens the last bin
    # Confidences sitting exactly on an edge open the bin above it, whatever the float rounding of 6/10.
    table, _ = reliability_table(np.array([[0.6, 0.4], [0.3, 0.7]]), np.array([0, 1]))
    assert table.loc[table["count"] > 0, "bin"].tolist() == ["0.6-0.7", "0.7-0.8"]
    with pytest.raises(ValueError, match="bins"):
        reliability_table(probs, np.array([1, 0]), bins=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        reliability_table(probs, np.array([1]))


def test_wilson_lower_bound_known_values() -> None:
    assert wilson_lower(95, 100) == pytest.approx(0.88825, abs=1e-4)  # statsmodels' wilson interval
    assert wilson_lower(6, 6) == pytest.approx(0.6097, abs=1e-4)
    assert wilson_lower(0, 10) == 0.0
    assert wilson_lower(0, 0) is None
