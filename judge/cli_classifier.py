"""`psyjudge classifier ...`: train, calibrate, evaluate, export and describe the classifier tier's
model. Options are parsed here; the work lives in judge.classifier.

Exit codes: 0 ok; 2 bad usage (options, data or model folder); 3 unreadable input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, cast

import typer

if TYPE_CHECKING:
    from judge.classifier.data import Loaded

EXIT_USAGE, EXIT_INPUT = 2, 3

classifier_app = typer.Typer(no_args_is_help=True, help="The local classifier tier: train (or distil from "
                             "judge verdicts), calibrate a checkpoint, evaluate, export to ONNX, describe.")

ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="Classifier folder (default: the shipped "
                                               "head over all-MiniLM-L6-v2).")]
DataOpt = Annotated[list[Path] | None, typer.Option(
    "--data", "-d", help="Labelled table (.csv/.jsonl/.parquet) with a response and a label column; repeatable.")]
LabelMapOpt = Annotated[list[str] | None, typer.Option(
    "--label-map", help="Map a label value, e.g. --label-map unsafe=HARMFUL; repeatable.")]
LabelColOpt = Annotated[str | None, typer.Option("--label-column", help="Default: label or gold_label.")]
ResponseColOpt = Annotated[str | None, typer.Option("--response-column", help="Default: response.")]
ContextColOpt = Annotated[str | None, typer.Option("--context-column", help="The user turn (default: prompt, "
                                                   "or the last user message of a `messages` list).")]
TargetOpt = Annotated[list[str] | None, typer.Option(
    "--target", help="Target precision for a label, e.g. --target HARMFUL=0.98 (default: SAFE=0.95, HARMFUL=0.95; "
    "a label without a target is never decided); repeatable.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="torch, onnx or onnx-int8.")]


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    from judge.cli_common import _fail as fail

    fail(message, code)


def _errors() -> tuple[type[Exception], ...]:
    from judge.classifier.backends import ClassifierUnavailable
    from judge.classifier.bundle import BundleError
    from judge.classifier.data import TrainingDataError
    from judge.classifier.head import HeadError

    return ClassifierUnavailable, BundleError, TrainingDataError, HeadError


def _targets(pairs: list[str] | None) -> dict[str, float]:
    from judge.classifier.train import DEFAULT_TARGETS

    if not pairs:
        return dict(DEFAULT_TARGETS)
    out: dict[str, float] = {}
    for pair in pairs:
        label, _, value = pair.partition("=")
        try:
            target = float(value)
        except ValueError:
            _fail(f"--target {pair!r}: expected LABEL=PRECISION, e.g. HARMFUL=0.95")
        if label.strip().upper() not in ("SAFE", "BORDERLINE", "HARMFUL") or not 0 < target <= 1:
            _fail(f"--target {pair!r}: the label is SAFE, BORDERLINE or HARMFUL and the precision in (0, 1]")
        out[label.strip().upper()] = target
    return out


def _load_tables(data: list[Path] | None, label_map: list[str] | None, label_column: str | None,
                 response_column: str | None, context_column: str | None) -> list[Loaded]:
    from judge.classifier.data import parse_label_map, read_labelled_table

    try:
        mapping = parse_label_map(label_map or [])
        return [read_labelled_table(p, label_column=label_column, response_column=response_column,
                                    context_column=context_column, label_map=mapping) for p in data or []]
    except _errors() as exc:
        _fail(str(exc))


@classifier_app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model to.")],
    data: DataOpt = None,
    distil: Annotated[list[Path] | None, typer.Option(
        "--distil", help="A psyjudge run folder (or its results.jsonl): learn the teacher tiers' verdicts; "
        "repeatable.")] = None,
    records: Annotated[Path | None, typer.Option(
        "--records", help="The log the distilled run scored, for the user turns (else responses alone).")] = None,
    teacher: Annotated[list[str] | None, typer.Option(
        "--teacher", help="Tier whose verdicts teach when distilling (default: llm); repeatable.")] = None,
    method: Annotated[str, typer.Option("--method", help="head (a linear head on frozen embeddings) or finetune "
                                        "(fine-tune a transformers checkpoint).")] = "head",
    base: Annotated[str, typer.Option("--base", help="Encoder or checkpoint folder (a DeBERTa-v3 checkpoint, say), "
                                      "or builtin:all-MiniLM-L6-v2.")] = "builtin:all-MiniLM-L6-v2",
    features: Annotated[str, typer.Option("--features", help="head: response, or response+context.")]
    = "response+context",
    head_file: Annotated[str, typer.Option("--head-file", help="head.safetensors, head.npz or head.json.")]
    = "head.safetensors",
    label_map: LabelMapOpt = None,
    label_column: LabelColOpt = None,
    response_column: ResponseColOpt = None,
    context_column: ContextColOpt = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.5,
                                                help="Stratified held-out share, never trained on.")] = 0.2,
    calibration: Annotated[str, typer.Option("--calibration", help="temperature, isotonic or none.")]
    = "temperature",
    target: TargetOpt = None,
    min_support: Annotated[int, typer.Option("--min-support", min=1, help="Fewest calibration rows a "
                                             "threshold may rest on.")] = 5,
    conservative: Annotated[bool, typer.Option(
        "--conservative", help="Require the Wilson 95% lower bound of each threshold's precision, not the observed "
        "precision, to reach the target: on little data the tier then decides less (or nothing), but what it "
        "decides is held to the target with 95% confidence.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0)] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_length: Annotated[int, typer.Option("--max-length", min=8, max=8192)] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    name: Annotated[str, typer.Option("--name", help="The model's name in its card.")] = "",
    rubric: Annotated[list[str] | None, typer.Option(
        "--rubric", help="Rubric id the model is for (default: those named in the data, else any); repeatable.")]
    = None,
) -> None:
    """Train a classifier on labelled data and/or distil it from judge verdicts, calibrate it, choose its
    abstention thresholds, and write it with its model card."""
    from judge.classifier.data import read_distillation
    from judge.classifier.train import TrainOptions
    from judge.classifier.train import train as run_train

    if method not in ("head", "finetune"):
        _fail(f"--method: expected head or finetune, got {method!r}")
    if features not in ("response", "response+context"):
        _fail(f"--features: expected response or response+context, got {features!r}")
    if calibration not in ("temperature", "isotonic", "none"):
        _fail(f"--calibration: expected temperature, isotonic or none, got {calibration!r}")
    if not data and not distil:
        _fail("nothing to train on: give --data and/or --distil")
    targets = _targets(target)  # options first: a typo should not wait for the data to load
    loaded = _load_tables(data, label_map, label_column, response_column, context_column)
    try:
        loaded += [read_distillation(p, teachers=teacher or ["llm"], records=records) for p in distil or []]
    except _errors() as exc:
        _fail(str(exc))
    options = TrainOptions(
        method=cast(Literal["head", "finetune"], method), base=base,
        features=cast(Literal["response", "response+context"], features), head_file=head_file,
        val_fraction=val_fraction, seed=seed, calibration=cast(Literal["temperature", "isotonic", "none"], calibration),
        targets=targets, min_support=min_support, bound="wilson" if conservative else "point",
        max_length=max_length, batch_size=batch_size,
        epochs=epochs, learning_rate=learning_rate, name=name, rubrics=rubric)
    for item in loaded:
        skipped = ", ".join(f"{k} {v}" for k, v in item.skipped.items() if v) or "none"
        typer.echo(f"{item.kind} {item.path}: {len(item.rows)} rows (skipped: {skipped})", err=True)
    try:
        trained = run_train(loaded, out, options)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    _summarise(trained.folder, trained.manifest.card.validation)


def _summarise(folder: Path, validation: dict[str, object] | None) -> None:
    from judge.classifier.bundle import read_manifest
    from judge.classifier.evaluate import format_report

    manifest = read_manifest(folder)
    th = manifest.thresholds
    typer.echo(f"wrote {folder} ({manifest.backend}; labels {', '.join(manifest.labels)})")
    for label in manifest.labels:
        key = str(label)
        value = th.threshold.get(key)
        typer.echo(f"  {key:<11} threshold {'never' if value is None else f'{value:.3f}'}"
                   + (f" (target {th.targets[key]}; unreachable)" if key in th.unreachable else
                      f" (target {th.targets[key]})" if key in th.targets else ""))
    if validation:
        typer.echo("\nheld-out validation:\n" + format_report(validation))


@classifier_app.command("calibrate")
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="A transformers sequence-classification checkpoint folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the psyjudge model to.")],
    data: DataOpt = None,
    label_map: LabelMapOpt = None,
    label_column: LabelColOpt = None,
    response_column: ResponseColOpt = None,
    context_column: ContextColOpt = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.8)] = 0.3,
    calibration: Annotated[str, typer.Option("--calibration")] = "temperature",
    target: TargetOpt = None,
    max_length: Annotated[int, typer.Option("--max-length", min=8, max=8192)] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    name: Annotated[str, typer.Option("--name")] = "",
) -> None:
    """Use a checkpoint fine-tuned elsewhere (a DeBERTa-v3 safety classifier, say): map its labels, fit
    calibration and thresholds on labelled rows, and write a psyjudge model that refers to it."""
    from judge.classifier.data import parse_label_map
    from judge.classifier.train import TrainOptions, calibrate_checkpoint

    if not data:
        _fail("calibration needs labelled rows: give --data")
    loaded = _load_tables(data, None, label_column, response_column, context_column)
    try:
        mapping = parse_label_map(label_map or [])
        options = TrainOptions(val_fraction=val_fraction, seed=seed, targets=_targets(target), max_length=max_length,
                               calibration=cast(Literal["temperature", "isotonic", "none"], calibration), name=name,
                               base=str(checkpoint))
        trained = calibrate_checkpoint(checkpoint, loaded, out, options, mapping)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    _summarise(trained.folder, trained.manifest.card.validation)


@classifier_app.command("evaluate")
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled table (.csv/.jsonl/.parquet).")],
    model: ModelOpt = None,
    runtime: RuntimeOpt = "torch",
    label_map: LabelMapOpt = None,
    label_column: LabelColOpt = None,
    response_column: ResponseColOpt = None,
    context_column: ContextColOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """Precision, recall and F1 per label, coverage and precision at the model's thresholds, and a
    reliability table, on labelled data."""
    import numpy as np

    from judge.classifier.evaluate import evaluation_report, format_report
    from judge.classifier.model import Classifier

    if runtime not in ("torch", "onnx", "onnx-int8"):
        _fail(f"--runtime: expected torch, onnx or onnx-int8, got {runtime!r}")
    if not data.is_file():
        _fail(f"{data}: no such file", EXIT_INPUT)
    loaded = _load_tables([data], label_map, label_column, response_column, context_column)[0]
    try:
        classifier = Classifier.load(model, cast(Literal["torch", "onnx", "onnx-int8"], runtime))
    except _errors() as exc:
        _fail(str(exc))
    strays = sorted({str(r.label) for r in loaded.rows} - {str(x) for x in classifier.labels})
    if strays:
        _fail(f"{data}: gold label(s) {', '.join(strays)} are not among the model's {', '.join(classifier.labels)}; "
              "map them with --label-map")
    prediction = classifier.predict([r.input for r in loaded.rows])
    y = np.array([classifier.labels.index(r.label) for r in loaded.rows])
    report = evaluation_report(prediction.probs, y, classifier.labels, classifier.manifest.thresholds.threshold)
    report["model"] = classifier.name
    report["data"] = str(data)
    typer.echo(f"{classifier.name} on {data}\n" + format_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@classifier_app.command("export-onnx")
def export_onnx(
    model: ModelOpt = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write a dynamically quantised int8 "
                                       "model.")] = True,
    parity_data: Annotated[Path | None, typer.Option(
        "--parity-data", help="Labelled or unlabelled table whose responses the parity check runs on (default: "
        "eight built-in texts); use a sample of your own traffic.")] = None,
) -> None:
    """Export the model to ONNX (and int8), check its probabilities against torch, and record it."""
    from judge.classifier.model import DEFAULT_MODEL_DIR
    from judge.classifier.onnx import export_onnx as run_export

    folder = (model or DEFAULT_MODEL_DIR).resolve()
    inputs = None
    if parity_data is not None:
        from judge.classifier.data import read_table
        from judge.classifier.inputs import text_input

        try:
            frame = read_table(parity_data)
        except _errors() as exc:
            _fail(str(exc), EXIT_INPUT)
        if "response" not in frame.columns:
            _fail(f"{parity_data}: no response column")
        context = frame["prompt"] if "prompt" in frame.columns else [""] * len(frame)
        inputs = [text_input(str(r), c if isinstance(c, str) else "") for r, c in zip(frame["response"], context,
                                                                                      strict=True) if str(r).strip()]
    try:
        spec = run_export(folder, int8=int8, inputs=inputs)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {folder / spec.fp32}" + (f" and {folder / spec.int8}" if spec.int8 else ""))
    for key, value in spec.parity.items():
        typer.echo(f"  {key}: {value}")


@classifier_app.command("info")
def info(model: ModelOpt = None) -> None:
    """Print the model card."""
    from judge.classifier.bundle import CARD_FILE, read_manifest, render_card
    from judge.classifier.model import DEFAULT_MODEL_DIR

    folder = (model or DEFAULT_MODEL_DIR).resolve()
    try:
        manifest = read_manifest(folder)
    except _errors() as exc:
        _fail(str(exc))
    card = folder / CARD_FILE
    typer.echo(card.read_text(encoding="utf-8") if card.is_file() else render_card(manifest))
