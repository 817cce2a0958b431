"""Calibrating the local classifier's probabilities, and the per-label cutoffs at which it may decide.

The classifier tier only decides a label where its calibrated confidence clears that label's cutoff;
everything else abstains and goes to the LLM judge. So two things are fitted on held-out data:

- a `Calibration`, stored as plain JSON in the model's manifest (never pickle, so loading a model runs no
  code). Temperature scaling is the default: one parameter cannot overfit a calibration set of a few
  hundred rows, and dividing every logit by the same T keeps the ranking (and so the argmax) unchanged.
  Isotonic regression, one-vs-rest per class, is there for large calibration sets with a miscalibration
  that a single temperature cannot fix; it has many more degrees of freedom and can move the argmax,
  and on rows it never saw it can give a class exactly 0 (no positives in that stretch of the curve).
  T is searched within [0.05, 20]; a fit at 20 means the logits carry almost no signal, at 0.05 that
  the calibration set is (nearly) separated, too easy to calibrate on.
- `Thresholds`: for each label with a target precision, the smallest confidence at which the rows
  decided with that label reach the target on the fitting data, with at least `min_support` of them.
  The point estimate of that precision is optimistic (the cutoff was chosen to clear it), and small
  support makes it noisy, so the Wilson 95% lower bound is reported beside it: a cutoff backed by 6 rows
  at 100% has a lower bound near 61%, which the reader should see before trusting it.

Labels without a target never decide: BORDERLINE is for the LLM judge unless someone sets a target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator, model_validator
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.isotonic import IsotonicRegression

from judge.metrics import reliability_table
from judge.schema import Strict

__all__ = [
    "METHODS",
    "Calibration",
    "IsotonicCurve",
    "MethodName",
    "Thresholds",
    "choose_thresholds",
    "coverage_report",
    "decide",
    "fit_calibration",
    "reliability_table",
    "softmax",
    "wilson_lower",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MethodName = Literal["none", "temperature", "isotonic"]
METHODS: tuple[MethodName, ...] = ("none", "temperature", "isotonic")
_T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12  # floor on a probability inside a log: an isotonic 0 must not make the NLL infinite
_WILSON_Z = 1.96


def softmax(logits: npt.ArrayLike) -> FloatArray:
    """Row-wise softmax; the row maximum is subtracted first so large logits cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def _wilson_array(successes: np.ndarray, n: np.ndarray, z: float = _WILSON_Z) -> np.ndarray:
    """wilson_lower over arrays (n > 0)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    out: np.ndarray = np.maximum(0.0, (centre - spread) / (1 + z * z / n))
    return out


def wilson_lower(successes: int, n: int, z: float = _WILSON_Z) -> float | None:
    """Wilson score lower bound of a binomial proportion (None for n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _logits(logits: npt.ArrayLike, *, k: int | None = None) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must be a (rows, classes) array, got shape {z.shape}")
    if k is not None and z.shape[1] != k:
        raise ValueError(f"logits have {z.shape[1]} classes but the calibration was fitted on {k}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    return z


def _gold(y: npt.ArrayLike, n: int, k: int) -> IntArray:
    g = np.asarray(y)
    if g.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match {n} rows, got {g.shape}")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {g.dtype}")
    if n and (g.min() < 0 or g.max() >= k):
        raise ValueError(f"y holds class indices outside 0..{k - 1}")
    return g.astype(np.int64)


def _probs(probs: npt.ArrayLike, labels: Sequence[str]) -> FloatArray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (rows, classes) array, got shape {p.shape}")
    if p.shape[1] != len(labels):
        raise ValueError(f"probs have {p.shape[1]} columns but {len(labels)} labels were given: {list(labels)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)}")
    # Logits passed by mistake would still give an argmax; refuse them rather than cut on a meaningless scale.
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be finite, non-negative, with rows summing to 1 (apply the calibration first)")
    return p


def _nll(probs: FloatArray, y: IntArray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], _EPS))))


class IsotonicCurve(Strict):
    """One class's one-vs-rest isotonic map: softmax probability x -> calibrated probability y."""

    x: list[float]
    y: list[float]

    @model_validator(mode="after")
    def _monotone(self) -> IsotonicCurve:
        # A hand-edited manifest is the likely source of a broken curve: say what is wrong with it.
        if not self.x or len(self.x) != len(self.y):
            raise ValueError(f"isotonic curve needs equal, non-empty x and y, got {len(self.x)} and {len(self.y)}")
        xs, ys = np.asarray(self.x), np.asarray(self.y)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError("isotonic curve holds NaN or infinite values")
        if (np.diff(xs) < 0).any():
            raise ValueError("isotonic curve x must be non-decreasing")
        # Decreasing y would invert the ranking; isotonic regression never produces it.
        if (np.diff(ys) < 0).any() or ys.min() < 0 or ys.max() > 1:
            raise ValueError("isotonic curve y must be non-decreasing and within [0, 1]")
        return self


class Calibration(Strict):
    """A fitted map from logits to calibrated probabilities, stored as JSON in the model manifest."""

    method: MethodName
    temperature: float | None = None
    curves: list[IsotonicCurve] | None = None
    fitted_on: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    @model_validator(mode="after")
    def _parameters_match_method(self) -> Calibration:
        t = self.temperature
        if self.method == "temperature" and (t is None or not math.isfinite(t) or t <= 0):
            raise ValueError(f"method 'temperature' needs a finite temperature > 0, got {t!r}")
        if self.method != "temperature" and t is not None:
            raise ValueError(f"temperature is only used by method 'temperature', not {self.method!r}")
        if self.method == "isotonic" and (self.curves is None or len(self.curves) < 2):
            raise ValueError("method 'isotonic' needs one curve per class (at least 2)")
        if self.method != "isotonic" and self.curves is not None:
            raise ValueError(f"curves are only used by method 'isotonic', not {self.method!r}")
        return self

    def apply(self, logits: npt.ArrayLike) -> FloatArray:
        """(n, k) logits -> (n, k) calibrated probabilities whose rows sum to 1."""
        if self.method == "none":
            return softmax(_logits(logits))
        if self.method == "temperature":
            assert self.temperature is not None  # the validator guarantees it
            return softmax(_logits(logits) / self.temperature)
        assert self.curves is not None
        p = softmax(_logits(logits, k=len(self.curves)))
        # np.interp holds the end values beyond the fitted range, as out_of_bounds="clip" did when fitting.
        q = np.column_stack([np.interp(p[:, j], c.x, c.y) for j, c in enumerate(self.curves)])
        total = q.sum(axis=1, keepdims=True)
        # Every curve can map a row to 0; that row keeps its uncalibrated softmax rather than divide by zero.
        zero = total[:, 0] <= 0
        out: FloatArray = np.where(zero[:, None], p, q / np.where(total > 0, total, 1.0))
        return out


def fit_calibration(logits: npt.ArrayLike, y: npt.ArrayLike, method: str = "temperature") -> Calibration:
    """Fit a calibration of `logits` against gold class indices `y` (held-out rows, not training rows)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    z = _logits(logits)
    n, k = z.shape
    if n == 0:
        raise ValueError("cannot fit a calibration on zero rows")
    gold = _gold(y, n, k)
    present = np.unique(gold)
    if len(present) < 2:
        raise ValueError(f"calibration needs at least 2 classes present in y, found only {present.tolist()}")
    before = softmax(z)
    temperature: float | None = None
    curves: list[IsotonicCurve] | None = None
    if method == "temperature":
        rows = np.arange(n)

        def nll(log_t: float) -> float:
            return float(-np.mean(log_softmax(z / math.exp(log_t), axis=1)[rows, gold]))

        # Optimise log T: the NLL is better conditioned there, and T stays positive by construction.
        res = minimize_scalar(nll, bounds=(math.log(_T_BOUNDS[0]), math.log(_T_BOUNDS[1])), method="bounded",
                              options={"xatol": 1e-6})
        temperature = float(math.exp(res.x))
    elif method == "isotonic":
        curves = []
        for j in range(k):
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
            iso.fit(before[:, j], (gold == j).astype(np.float64))
            curves.append(IsotonicCurve(x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist()))
    cal = Calibration(method=method, temperature=temperature, curves=curves, fitted_on=n)
    after = cal.apply(z)
    return cal.model_copy(update={
        "nll_before": _nll(before, gold), "nll_after": _nll(after, gold),
        "ece_before": reliability_table(before, gold)[1], "ece_after": reliability_table(after, gold)[1],
    })


class Thresholds(Strict):
    """Per-label cutoffs on calibrated confidence, and how they did on the rows they were chosen on."""

    targets: dict[str, float]
    threshold: dict[str, float | None]
    support: dict[str, int]
    precision: dict[str, float | None]
    precision_lower: dict[str, float | None]
    unreachable: list[str]
    coverage: float
    bound: Literal["point", "wilson"] = Field(
        default="point", description="What had to clear the target: the observed precision, or its Wilson 95% "
        "lower bound (conservative: on few rows it decides less, or nothing).")

    @field_validator("targets")
    @classmethod
    def _targets_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for label, t in v.items():
            if not (0 < t <= 1):  # NaN fails this too
                raise ValueError(f"target precision for {label!r} must be in (0, 1], got {t!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Thresholds:
        labels = set(self.threshold)
        for name in ("support", "precision", "precision_lower"):
            if set(getattr(self, name)) != labels:
                raise ValueError(f"{name} must name the same labels as threshold: {sorted(labels)}")
        if not set(self.targets) <= labels:
            raise ValueError(f"targets name labels not in threshold: {sorted(set(self.targets) - labels)}")
        for label, cut in self.threshold.items():
            if cut is not None and not (0 <= cut <= 1):
                raise ValueError(f"threshold for {label!r} must be in [0, 1], got {cut!r}")
            if cut is not None and label not in self.targets:
                raise ValueError(f"{label!r} has a threshold but no target precision")
        return self


def _check_targets(targets: Mapping[str, float], labels: Sequence[str]) -> None:
    for label, t in targets.items():
        if label not in labels:
            raise ValueError(f"target for unknown label {label!r}; labels are {list(labels)}")
        if not (0 < t <= 1):
            raise ValueError(f"target precision for {label!r} must be in (0, 1], got {t!r}")


def choose_thresholds(probs: npt.ArrayLike, y: npt.ArrayLike, labels: Sequence[str],
                      targets: Mapping[str, float], min_support: int = 5,
                      bound: Literal["point", "wilson"] = "point") -> Thresholds:
    """For each targeted label, the smallest confidence cutoff meeting its target precision on these rows.

    A row is decided with label L at cutoff c when L is its argmax and its confidence (top probability)
    is >= c. Candidate cutoffs are the confidences that occur, so rows with equal confidence are in or
    out together, exactly as `decide` will treat them. Among cutoffs whose decided set has precision >=
    target and at least `min_support` rows, the smallest wins (most coverage). None qualifying: the
    label never decides and is listed in `unreachable`. With bound="wilson" the Wilson 95% lower bound
    of the precision, not the precision itself, must reach the target.
    """
    p = _probs(probs, labels)
    gold = _gold(y, p.shape[0], p.shape[1])
    _check_targets(targets, labels)
    if min_support < 1:
        raise ValueError(f"min_support must be at least 1, got {min_support}")
    pred, conf = p.argmax(axis=1), p.max(axis=1)
    threshold: dict[str, float | None] = {}
    support: dict[str, int] = {}
    precision: dict[str, float | None] = {}
    lower: dict[str, float | None] = {}
    unreachable: list[str] = []
    for j, label in enumerate(labels):
        threshold[label], support[label], precision[label], lower[label] = None, 0, None, None
        if label not in targets:
            continue
        mine = pred == j
        order = np.argsort(-conf[mine], kind="stable")
        c = conf[mine][order]
        hits = np.cumsum(gold[mine][order] == j)
        # Cut only at the last row of each run of equal confidences: a tie is one cutoff.
        ends = np.flatnonzero(np.append(c[1:] != c[:-1], True)) if len(c) else np.array([], dtype=np.int64)
        decided = ends + 1
        observed = hits[ends] / decided if bound == "point" else _wilson_array(hits[ends], decided)
        ok = (observed >= targets[label]) & (decided >= min_support)
        if not ok.any():
            unreachable.append(label)
            continue
        best = ends[np.flatnonzero(ok)[-1]]  # the last qualifying end is the lowest cutoff
        n_dec, n_hit = int(best + 1), int(hits[best])
        threshold[label], support[label] = float(c[best]), n_dec
        precision[label], lower[label] = n_hit / n_dec, wilson_lower(n_hit, n_dec)
    coverage = float(decide(p, labels, threshold)[2].mean())
    return Thresholds(targets=dict(targets), threshold=threshold, support=support, precision=precision,
                      precision_lower=lower, unreachable=unreachable, coverage=coverage, bound=bound)


def decide(probs: npt.ArrayLike, labels: Sequence[str], threshold: Mapping[str, float | None]
           ) -> tuple[IntArray, FloatArray, BoolArray]:
    """(argmax index, confidence, decided mask). A label missing from `threshold`, or None, never decides."""
    p = _probs(probs, labels)
    unknown = set(threshold) - set(labels)
    if unknown:
        raise ValueError(f"threshold for unknown labels {sorted(unknown)}; labels are {list(labels)}")
    # inf, not a default cutoff: an unset label abstains, it does not fall back to deciding.
    cut = np.array([math.inf if threshold.get(lab) is None else threshold[lab] for lab in labels], dtype=np.float64)
    if np.isnan(cut).any() or (cut[np.isfinite(cut)] < 0).any() or (cut[np.isfinite(cut)] > 1).any():
        raise ValueError(f"thresholds must be None or within [0, 1], got {dict(threshold)}")
    pred = p.argmax(axis=1).astype(np.int64)
    conf = p.max(axis=1)
    return pred, conf, conf >= cut[pred]


def coverage_report(probs: npt.ArrayLike, y: npt.ArrayLike, labels: Sequence[str],
                    threshold: Mapping[str, float | None]) -> dict[str, Any]:
    """How the cutoffs do on labelled rows: coverage, accuracy, and per-label precision and recall.

    Recall counts only decided rows (decided and correct / gold count): what the classifier tier finds by
    itself, before the LLM judge sees the rest. Plain Python numbers, None where a ratio is undefined.
    """
    pred, _, decided = decide(probs, labels, threshold)
    gold = _gold(y, len(pred), len(labels))
    correct = pred == gold
    n, n_dec = len(gold), int(decided.sum())
    per_label: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        mine = decided & (pred == j)
        n_mine, n_gold, n_hit = int(mine.sum()), int((gold == j).sum()), int((mine & correct).sum())
        per_label[label] = {
            "gold": n_gold, "decided": n_mine, "correct": n_hit,
            "precision": n_hit / n_mine if n_mine else None,
            "precision_lower": wilson_lower(n_hit, n_mine),
            "recall": n_hit / n_gold if n_gold else None,
        }
    return {
        "rows": n, "decided": n_dec, "coverage": n_dec / n,
        "accuracy_decided": int((correct & decided).sum()) / n_dec if n_dec else None,
        "accuracy_all": int(correct.sum()) / n,
        "labels": per_label,
    }
