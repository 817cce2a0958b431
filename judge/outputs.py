"""The shapes of what `psyjudge eval` and `psyjudge probe` write into a run folder (eval.json,
probes.json), which `psyjudge gate` and `psyjudge report` read back. Strict pydantic models, so a
stale or hand-edited file is an error with the field's name, never a silently missing figure.
"""

from __future__ import annotations

from pydantic import Field

from judge.schema import Strict

EVAL_FILE = "eval.json"
EVAL_MARKDOWN = "eval.md"
PROBES_FILE = "probes.json"


class Estimate(Strict):
    """A figure with its 95% confidence interval (None where it is undefined, e.g. no support)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    method: str = Field(default="bootstrap", description="bootstrap (percentile, over records) or wilson.")


class LabelScores(Strict):
    label: str
    support: int = Field(description="Gold rows with this label.")
    predicted: int = Field(description="Rows psyjudge gave this label.")
    precision: Estimate
    recall: Estimate
    f1: Estimate


class Breakdown(Strict):
    """The agreement figures of one slice (a category, or the tier that decided)."""

    group: str
    n: int = Field(description="Rows of the slice in the metrics (ERROR and degraded left out).")
    errors: int = 0
    degraded: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    harmful_precision: float | None = None
    harmful_recall: float | None = None
    over_refusal: float | None = None


class EvalReport(Strict):
    source: str = Field(description="The run folder the verdicts were read from.")
    gold_column: str
    category_column: str | None
    rows: int = Field(description="Verdicts read (one per record; the combined label with several rubrics).")
    scored: int = Field(description="Rows in the metrics.")
    excluded: dict[str, int] = Field(description="Rows kept out of the metrics, by reason: error, degraded, "
                                     "no_gold, out_of_scope (label_scope is not response), unknown_gold.")
    labels: list[str] = Field(description="Order of the confusion matrix's rows and columns.")
    confusion: list[list[int]] = Field(description="Rows: gold label; columns: psyjudge's label.")
    per_label: list[LabelScores]
    accuracy: Estimate
    macro_f1: Estimate
    binary_f1_borderline_as_harmful: Estimate = Field(
        description="HARMFUL-vs-SAFE F1 with BORDERLINE counted as HARMFUL, in gold and prediction alike.")
    binary_f1_borderline_as_safe: Estimate
    kappa: Estimate = Field(description="Cohen's kappa.")
    weighted_kappa: Estimate = Field(description="Cohen's kappa, linear weights over SAFE < BORDERLINE < HARMFUL.")
    over_refusal: Estimate = Field(description="Share of SAFE-gold rows labelled HARMFUL.")
    over_refusal_borderline: Estimate = Field(description="Share of SAFE-gold rows labelled BORDERLINE.")
    harmful_recall: Estimate = Field(description="Share of HARMFUL-gold rows labelled HARMFUL.")
    by_category: list[Breakdown]
    by_tier: list[Breakdown]
    bootstrap_resamples: int
    seed: int
    notes: list[str] = Field(default_factory=list)


class ProbeFlip(Strict):
    record_id: str
    before: str
    after: str
    probed_text: str = Field(description="The perturbed response (truncated for display).")


class ProbeResult(Strict):
    probe: str = Field(description="apology_add, apology_strip, verbosity, injection, obfuscation_leet, "
                       "obfuscation_base64.")
    description: str
    pairs: int = Field(description="Records judged both ways with a grade each time.")
    flips: int
    flip_rate: Estimate = Field(description="flips / pairs, Wilson 95% interval.")
    target: float | None = Field(description="The flip rate a sound judge has: 0 for apology and injection.")
    errors: int = Field(description="Pairs left out because either side was ERROR.")
    by_direction: dict[str, int] = Field(default_factory=dict, description="'HARMFUL->SAFE': count.")
    examples: list[ProbeFlip] = Field(default_factory=list)


class ProbeReport(Strict):
    source: str
    rubrics: list[str]
    mode: str
    tiers: list[str]
    judge: str
    records: int
    probes: list[ProbeResult]
    created_at: str
