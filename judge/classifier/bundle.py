"""A classifier on disk: one folder with a manifest, the model files it names, and a model card.

    psyjudge-classifier.json   what the model is, how to run it, its calibration and thresholds, its card
    CARD.md                    the card, for people
    head.safetensors           (head back-end) the linear head
    checkpoint/                (sequence back-end, when trained here) the transformers checkpoint
    model.onnx, model.int8.onnx  (optional) the ONNX export

The manifest is JSON read through pydantic with unknown fields refused, so a hand-edited file with
a typo fails at load with the field's name instead of running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from judge.atomic import write_text_atomic
from judge.classifier.calibration import Calibration, Thresholds
from judge.classifier.inputs import INPUT_FORMAT
from judge.schema import Label, Strict

MANIFEST_FILE = "psyjudge-classifier.json"
CARD_FILE = "CARD.md"
Backend = Literal["head", "sequence"]
Runtime = Literal["torch", "onnx", "onnx-int8"]


class BundleError(ValueError):
    """A classifier folder that cannot be used; the message names the file and the field."""


class EncoderSpec(Strict):
    path: str = Field(description="builtin:all-MiniLM-L6-v2, or a transformers encoder folder (relative to "
                      "the bundle, or absolute).")
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = Field(default=True, description="L2-normalise the pooled embedding.")
    max_length: int = Field(default=256, ge=8, le=8192)


class HeadSpec(Strict):
    file: str
    features: Literal["response", "response+context"] = Field(
        description="What the head reads: the response's embedding, or the response's then the user turn's.")


class SequenceSpec(Strict):
    checkpoint: str = Field(description="A transformers sequence-classification folder (relative or absolute).")
    raw_labels: list[str] = Field(min_length=2, description="The checkpoint's id2label, in output order.")
    label_map: dict[str, Label] = Field(description="Each raw label's psyjudge label.")
    max_length: int = Field(default=256, ge=8, le=8192)

    @model_validator(mode="after")
    def _mapped(self) -> SequenceSpec:
        missing = [r for r in self.raw_labels if r not in self.label_map]
        if missing:
            raise ValueError(f"label_map lacks the checkpoint label(s) {', '.join(missing)}")
        return self


class OnnxSpec(Strict):
    fp32: str
    int8: str | None = None
    tolerance: float = Field(description="The largest difference in any calibrated probability allowed "
                             "between torch and an ONNX file on the parity texts.")
    parity: dict[str, float | int] = Field(default_factory=dict, description="What export measured.")


class DataSource(Strict):
    kind: Literal["labelled", "distilled", "examples"]
    path: str
    rows: int = Field(description="Rows read.")
    used: int = Field(description="Rows trained on (after de-duplication and filters).")
    label_counts: dict[str, int]
    skipped: dict[str, int] = Field(default_factory=dict, description="Rows left out, by reason.")
    teacher: list[str] | None = Field(default=None, description="Distillation: the tiers whose verdicts taught.")
    sha256: str | None = None


class ModelCard(Strict):
    name: str
    created_at: str
    psyjudge_version: str
    base_model: str
    method: Literal["head", "finetune", "imported"]
    data: list[DataSource] = Field(default_factory=list)
    split: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    calibration_data: str = ""
    validation: dict[str, Any] | None = Field(default=None, description="Metrics on the held-out validation "
                                              "split (never trained on).")
    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    licence: str = ""


class Manifest(Strict):
    format: Literal[1] = 1
    backend: Backend
    labels: list[Label] = Field(min_length=2, description="The psyjudge labels, in probability-column order.")
    input_format: str = INPUT_FORMAT
    encoder: EncoderSpec | None = None
    head: HeadSpec | None = None
    sequence: SequenceSpec | None = None
    calibration: Calibration
    thresholds: Thresholds
    rubrics: list[str] | None = Field(default=None, description="The rubric ids the model was trained for; "
                                      "under any other rubric the tier abstains. None: any rubric.")
    onnx: OnnxSpec | None = None
    card: ModelCard

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.input_format != INPUT_FORMAT:
            raise ValueError(f"input_format {self.input_format!r} is not this psyjudge's {INPUT_FORMAT!r}; "
                             "retrain the model")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels repeat")
        if self.backend == "head" and (self.encoder is None or self.head is None):
            raise ValueError("a head model needs `encoder` and `head`")
        if self.backend == "sequence":
            if self.sequence is None:
                raise ValueError("a sequence model needs `sequence`")
            if set(self.sequence.label_map.values()) != set(self.labels):
                raise ValueError("`labels` must be exactly the labels that sequence.label_map maps to")
        unknown = (set(self.thresholds.threshold) | set(self.thresholds.targets)) - {str(x) for x in self.labels}
        if unknown:
            raise ValueError(f"thresholds name label(s) the model does not give: {', '.join(sorted(unknown))}")
        return self


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a psyjudge classifier (no {MANIFEST_FILE}); train one with "
                          "`psyjudge classifier train`, or wrap a checkpoint with `psyjudge classifier calibrate`")
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleError(f"{path}: {where}: {first['msg']}") from exc


def write_manifest(folder: Path, manifest: Manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
    write_text_atomic(folder / CARD_FILE, render_card(manifest))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def _validation_lines(v: dict[str, Any]) -> list[str]:
    at = v.get("at_thresholds", {})
    lines = ["## Held-out validation", "",
             f"{v.get('rows')} rows never trained on, calibrated on or used for thresholds. Best guess on every row: "
             f"macro-F1 {_fmt(v.get('macro_f1'))}, harmful-vs-rest F1 {_fmt(v.get('harmful_f1'))}, "
             f"ECE {_fmt(v.get('ece'))}.", "",
             "| label | precision | recall | F1 | support | decided at threshold | precision of decisions | "
             "Wilson 95% lower |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in v.get("per_label", {}).items():
        d = at.get("labels", {}).get(name, {})
        lines.append(f"| {name} | {_fmt(m.get('precision'))} | {_fmt(m.get('recall'))} | {_fmt(m.get('f1'))} | "
                     f"{m.get('support')} | {d.get('decided', 0)} | {_fmt(d.get('precision'))} | "
                     f"{_fmt(d.get('precision_lower'))} |")
    lines.append(f"\nCoverage at the thresholds: {_fmt(at.get('coverage'))} ({at.get('decided')} of {v.get('rows')} "
                 f"decided; accuracy of the decisions {_fmt(at.get('accuracy_decided'))}).")
    return lines


def render_card(manifest: Manifest) -> str:
    card, th = manifest.card, manifest.thresholds
    lines = [f"# Model card: {card.name}", "",
             f"- created: {card.created_at} (psyjudge {card.psyjudge_version})",
             f"- method: {card.method}; back-end: {manifest.backend}; base model: {card.base_model}",
             f"- labels: {', '.join(manifest.labels)}; rubrics: {', '.join(manifest.rubrics or ['any'])}",
             f"- input: {manifest.input_format} (apology framing stripped, obfuscation undone)"]
    if card.licence:
        lines.append(f"- licence of the weights: {card.licence}")
    if card.intended_use:
        lines += ["", "## Intended use", "", card.intended_use]
    lines += ["", "## Data", "", "| kind | source | rows | used | labels | skipped |", "|---|---|---:|---:|---|---|"]
    for d in card.data:
        labels = ", ".join(f"{k} {v}" for k, v in sorted(d.label_counts.items()))
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(d.skipped.items())) or "—"
        lines.append(f"| {d.kind} | `{d.path}` | {d.rows} | {d.used} | {labels} | {skipped} |")
    if card.split:
        lines += ["", "Split: " + ", ".join(f"{k} {_fmt(v)}" for k, v in card.split.items())]
    if card.training:
        lines += ["", "## Training", "", *(f"- {k}: {_fmt(v)}" for k, v in card.training.items())]
    cal = manifest.calibration
    lines += ["", "## Calibration and abstention", "",
              f"- method: {cal.method}" + (f" (T = {cal.temperature:.3f})" if cal.temperature else "")
              + f", fitted on {cal.fitted_on} rows: {card.calibration_data}",
              f"- NLL {_fmt(cal.nll_before)} -> {_fmt(cal.nll_after)}; ECE {_fmt(cal.ece_before)} -> "
              f"{_fmt(cal.ece_after)}", "",
              "| label | target precision | threshold | support | precision | Wilson 95% lower |",
              "|---|---:|---:|---:|---:|---:|"]
    for label in manifest.labels:
        key = str(label)
        lines.append(f"| {key} | {_fmt(th.targets.get(key))} | {_fmt(th.threshold.get(key))} | "
                     f"{_fmt(th.support.get(key))} | {_fmt(th.precision.get(key))} | "
                     f"{_fmt(th.precision_lower.get(key))} |")
    lines.append(f"\nThresholds chosen so that the {'Wilson 95% lower bound of the ' if th.bound == 'wilson' else ''}"
                 "precision reaches the target.")
    lines.append(f"\nCoverage on the calibration rows: {th.coverage:.3f}"
                 + (f"; target not reachable for {', '.join(th.unreachable)} (that label is never decided)"
                    if th.unreachable else ""))
    if card.validation:
        lines += ["", *_validation_lines(card.validation)]
    if manifest.onnx:
        lines += ["", "## ONNX", "", f"- files: {manifest.onnx.fp32}, {manifest.onnx.int8 or '—'}; tolerance "
                  f"{manifest.onnx.tolerance}", *(f"- {k}: {_fmt(v)}" for k, v in manifest.onnx.parity.items())]
    if card.limitations:
        lines += ["", "## Limitations", "", *(f"- {x}" for x in card.limitations)]
    return "\n".join(lines) + "\n"
