"""`psyjudge classifier train`: fit a head on frozen embeddings, or fine-tune a checkpoint, then
calibrate, choose the abstention thresholds and write the model with its card.

The data are split once, stratified, into training and validation rows; validation rows are never
trained on, calibrated on or used to pick thresholds, so the card's validation figures are honest.
- head: the head's regularisation is chosen by stratified cross-validation on the training rows,
  and the calibration and thresholds are fitted on the out-of-fold predictions of those rows (every
  training row, each predicted by a head that did not see it), then the head is refitted on them all.
- finetune: there is no cheap out-of-fold prediction, so the training rows are split again and the
  calibration and thresholds are fitted on that inner part, which the fine-tuning never sees.
"""

from __future__ import annotations

import copy
import importlib.metadata
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from judge.classifier.backends import (
    BUILTIN_ENCODER,
    TorchEncoder,
    head_features,
    pair_batch,
    resolve_model_path,
    torch_module,
    transformers_module,
)
from judge.classifier.bundle import DataSource, EncoderSpec, HeadSpec, Manifest, ModelCard, SequenceSpec, write_manifest
from judge.classifier.calibration import Calibration, choose_thresholds, fit_calibration
from judge.classifier.data import Loaded, Row, TrainingDataError, deduplicate
from judge.classifier.evaluate import evaluation_report
from judge.classifier.head import LinearHead
from judge.classifier.model import label_log_probs
from judge.schema import Label

DEFAULT_TARGETS: dict[str, float] = {"SAFE": 0.95, "HARMFUL": 0.95}
"""Target precision per label; BORDERLINE has none, so the classifier leaves it to the LLM judge."""

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class TrainOptions:
    method: Literal["head", "finetune"] = "head"
    base: str = BUILTIN_ENCODER
    features: Literal["response", "response+context"] = "response+context"
    head_file: str = "head.safetensors"
    val_fraction: float = 0.2
    seed: int = 0
    calibration: Literal["temperature", "isotonic", "none"] = "temperature"
    targets: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    min_support: int = 5
    bound: Literal["point", "wilson"] = "point"
    max_length: int = 256
    batch_size: int = 16
    # fine-tuning
    epochs: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    calibration_fraction: float = 0.25
    name: str = ""
    rubrics: list[str] | None = None
    intended_use: str = ""
    limitations: list[str] = field(default_factory=list)
    licence: str = ""


@dataclass
class Trained:
    folder: Path
    manifest: Manifest


def canonical_labels(rows: Sequence[Row]) -> list[Label]:
    present = {r.label for r in rows}
    labels = [label for label in Label if label in present]
    if len(labels) < 2:
        raise TrainingDataError(f"the data have one label only ({', '.join(labels) or 'none'}); a classifier "
                                "needs at least two")
    return labels


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices); each class keeps its share in both."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if fraction <= 0:
        return index, index[:0]
    counts = Counter(y.tolist())
    if min(counts.values()) < 2:
        raise TrainingDataError("a label has fewer than 2 rows, so a stratified split is impossible; add rows or "
                                "pass --val-fraction 0")
    train, held = train_test_split(index, test_size=fraction, stratify=y, random_state=seed)
    return np.sort(train), np.sort(held)


def _class_weights(y: np.ndarray, classes: int) -> np.ndarray:
    """Balanced weights: n / (classes * count), so a rare label counts as much as a common one."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weights = len(y) / (classes * np.clip(counts, 1, None))
    result: np.ndarray = weights.astype(np.float32)
    return result


def _head_from(model: Any, classes: int) -> LinearHead:
    """A fitted LogisticRegression as a LinearHead. A binary one has a single row w: the two-class
    logits (0, w.x + b) give the same softmax as its sigmoid."""
    coef, intercept = np.asarray(model.coef_, np.float32), np.asarray(model.intercept_, np.float32)
    if classes == 2 and coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1, np.float32), intercept])
    return LinearHead(coef, intercept)


def fit_head(features: np.ndarray, y: np.ndarray, classes: int, seed: int
             ) -> tuple[LinearHead, np.ndarray, dict[str, Any]]:
    """(head fitted on all rows, out-of-fold log-probabilities, what was chosen)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

    folds = max(2, min(5, int(np.bincount(y).min())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    base = LogisticRegression(class_weight="balanced", max_iter=5000)
    search = GridSearchCV(base, {"C": list(C_GRID)}, cv=cv, scoring="f1_macro", n_jobs=1)
    search.fit(features, y)
    best_c = float(search.best_params_["C"])
    chosen = LogisticRegression(class_weight="balanced", max_iter=5000, C=best_c)
    oof = cross_val_predict(chosen, features, y, cv=cv, method="predict_log_proba")
    chosen.fit(features, y)
    info = {"C": best_c, "cv_folds": folds, "cv_macro_f1": round(float(search.best_score_), 4),
            "class_weight": "balanced"}
    return _head_from(chosen, classes), np.asarray(oof, dtype=np.float64), info


def _sources(loaded: Sequence[Loaded], used: Mapping[str, Counter[str]]) -> list[DataSource]:
    out = []
    for item in loaded:
        counts = used.get(item.path, Counter())
        out.append(DataSource(kind=item.kind, path=item.path, rows=item.read, used=sum(counts.values()),
                              label_counts=dict(sorted(counts.items())), skipped=dict(item.skipped),
                              teacher=item.teacher, sha256=item.sha256))
    return out


def _collect(loaded: Sequence[Loaded]) -> tuple[list[Row], Counter[str]]:
    rows = [r for item in loaded for r in item.rows]
    kept, dropped = deduplicate(rows)
    if not kept:
        raise TrainingDataError("no usable training rows")
    return kept, dropped


def _card(options: TrainOptions, loaded: Sequence[Loaded], rows: Sequence[Row], dropped: Counter[str],
          split: dict[str, Any], training: dict[str, Any], calibration_data: str,
          validation: dict[str, Any] | None, method: Literal["head", "finetune"]) -> ModelCard:
    used: dict[str, Counter[str]] = {}
    for r in rows:
        used.setdefault(r.source, Counter())[str(r.label)] += 1
    sources = _sources(loaded, used)
    if dropped:
        split = {**split, "dropped": dict(dropped)}
    return ModelCard(
        name=options.name or f"psyjudge-{method}-{datetime.now(UTC):%Y%m%d}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        psyjudge_version=importlib.metadata.version("psyjudge"),
        base_model=options.base, method=method, data=sources, split=split, training=training,
        calibration_data=calibration_data, validation=validation, intended_use=options.intended_use,
        limitations=options.limitations, licence=options.licence)


def _rubrics(options: TrainOptions, loaded: Sequence[Loaded]) -> list[str] | None:
    if options.rubrics is not None:
        return sorted(options.rubrics) or None
    found = set().union(*(item.rubrics for item in loaded)) if loaded else set()
    return sorted(found) or None


def _calibrate(log_probs: np.ndarray, y: np.ndarray, labels: Sequence[Label], options: TrainOptions
               ) -> tuple[Calibration, Any]:
    calibration = fit_calibration(log_probs, y, options.calibration)
    thresholds = choose_thresholds(calibration.apply(log_probs), y, [str(x) for x in labels],
                                   {k: v for k, v in options.targets.items() if Label(k) in labels},
                                   options.min_support, options.bound)
    return calibration, thresholds


def train_head(loaded: Sequence[Loaded], out: Path, options: TrainOptions) -> Trained:
    rows, dropped = _collect(loaded)
    labels = canonical_labels(rows)
    y = np.array([labels.index(r.label) for r in rows])
    train_idx, val_idx = stratified_split(y, options.val_fraction, options.seed)
    encoder = TorchEncoder(resolve_model_path(options.base, Path.cwd()), max_length=options.max_length,
                           batch_size=max(options.batch_size, 32))
    spec = EncoderSpec(path=options.base if options.base.startswith("builtin:") else str(Path(options.base).resolve()),
                       max_length=options.max_length)
    features = head_features(encoder, [r.input for r in rows], options.features)
    head, oof, info = fit_head(features[train_idx], y[train_idx], len(labels), options.seed)
    calibration, thresholds = _calibrate(oof, y[train_idx], labels, options)
    validation = None
    if len(val_idx):
        val_probs = calibration.apply(label_log_probs(head.logits(features[val_idx]), None))
        validation = evaluation_report(val_probs, y[val_idx], labels, thresholds.threshold)
    out.mkdir(parents=True, exist_ok=True)
    head.save(out / options.head_file)
    card = _card(options, loaded, rows, dropped,
                 {"train": len(train_idx), "validation": len(val_idx), "stratified": True, "seed": options.seed},
                 {**info, "features": options.features, "encoder_dim": encoder.dim, "max_length": options.max_length},
                 f"out-of-fold predictions on the {len(train_idx)} training rows", validation, "head")
    manifest = Manifest(backend="head", labels=labels, encoder=spec,
                        head=HeadSpec(file=options.head_file, features=options.features),
                        calibration=calibration, thresholds=thresholds, rubrics=_rubrics(options, loaded), card=card)
    write_manifest(out, manifest)
    return Trained(out, manifest)


def _seed_everything(seed: int) -> None:
    torch = torch_module()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sequence_log_probs(model: Any, tokenizer: Any, rows: Sequence[Row], options: TrainOptions) -> np.ndarray:
    torch = torch_module()
    model.eval()
    out = []
    for start in range(0, len(rows), options.batch_size):
        batch = pair_batch(tokenizer, [r.input for r in rows[start:start + options.batch_size]],
                           options.max_length, "pt")
        with torch.inference_mode():
            out.append(torch.log_softmax(model(**batch).logits.float(), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, int(model.config.num_labels)))


def finetune(loaded: Sequence[Loaded], out: Path, options: TrainOptions) -> Trained:
    """Fine-tune a transformers checkpoint (DeBERTa-v3 or any encoder with a sequence-classification
    head) with class-weighted cross-entropy, keeping the epoch with the best macro-F1 on the
    calibration rows."""
    from sklearn.metrics import f1_score

    torch = torch_module()
    transformers = transformers_module()
    rows, dropped = _collect(loaded)
    labels = canonical_labels(rows)
    y = np.array([labels.index(r.label) for r in rows])
    train_idx, val_idx = stratified_split(y, options.val_fraction, options.seed)
    fit_part, cal_part = stratified_split(y[train_idx], options.calibration_fraction, options.seed + 1)
    fit_idx, cal_idx = train_idx[fit_part], train_idx[cal_part]
    if not len(cal_idx):
        raise TrainingDataError("fine-tuning needs calibration rows: --calibration-fraction must be above 0")
    _seed_everything(options.seed)
    base = resolve_model_path(options.base, Path.cwd())
    names = [str(x) for x in labels]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=len(labels), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True)
    weights = torch.tensor(_class_weights(y[fit_idx], len(labels)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    steps = options.epochs * -(-len(fit_idx) // options.batch_size)
    schedule = transformers.get_linear_schedule_with_warmup(optimiser, max(1, steps // 10), max(1, steps))
    generator = np.random.default_rng(options.seed)
    best: tuple[float, int, dict[str, Any]] | None = None
    history = []
    for epoch in range(options.epochs):
        model.train()
        order = generator.permutation(fit_idx)
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            chunk = order[start:start + options.batch_size]
            batch = pair_batch(tokenizer, [rows[i].input for i in chunk], options.max_length, "pt")
            loss = loss_fn(model(**batch).logits, torch.tensor(y[chunk]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            total += float(loss.detach()) * len(chunk)
        cal_lp = _sequence_log_probs(model, tokenizer, [rows[i] for i in cal_idx], options)
        score = float(f1_score(y[cal_idx], cal_lp.argmax(axis=1), average="macro", zero_division=0))
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(fit_idx), 4), "calibration_macro_f1":
                        round(score, 4)})
        if best is None or score > best[0]:
            best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    cal_lp = _sequence_log_probs(model, tokenizer, [rows[i] for i in cal_idx], options)
    calibration, thresholds = _calibrate(cal_lp, y[cal_idx], labels, options)
    validation = None
    if len(val_idx):
        val_lp = _sequence_log_probs(model, tokenizer, [rows[i] for i in val_idx], options)
        validation = evaluation_report(calibration.apply(val_lp), y[val_idx], labels, thresholds.threshold)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "checkpoint"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "checkpoint"))
    card = _card(options, loaded, rows, dropped,
                 {"train": len(fit_idx), "calibration": len(cal_idx), "validation": len(val_idx), "stratified": True,
                  "seed": options.seed},
                 {"epochs": options.epochs, "best_epoch": best[1], "learning_rate": options.learning_rate,
                  "weight_decay": options.weight_decay, "batch_size": options.batch_size,
                  "max_length": options.max_length, "class_weights": [round(float(w), 4) for w in weights],
                  "history": history},
                 f"{len(cal_idx)} rows held out of the fine-tuning", validation, "finetune")
    manifest = Manifest(backend="sequence", labels=labels,
                        sequence=SequenceSpec(checkpoint="checkpoint", raw_labels=names,
                                              label_map={n: Label(n) for n in names}, max_length=options.max_length),
                        calibration=calibration, thresholds=thresholds, rubrics=_rubrics(options, loaded), card=card)
    write_manifest(out, manifest)
    return Trained(out, manifest)


def train(loaded: Sequence[Loaded], out: Path, options: TrainOptions) -> Trained:
    if options.method == "head":
        return train_head(loaded, out, options)
    return finetune(loaded, out, options)


ALIASES: dict[str, Label] = {
    "safe": Label.SAFE, "benign": Label.SAFE, "harmless": Label.SAFE, "not_harmful": Label.SAFE,
    "unharmful": Label.SAFE, "ok": Label.SAFE,
    "borderline": Label.BORDERLINE, "caution": Label.BORDERLINE, "controversial": Label.BORDERLINE,
    "harmful": Label.HARMFUL, "unsafe": Label.HARMFUL, "toxic": Label.HARMFUL,
}
"""Checkpoint label names read without a --label-map. Generic names (LABEL_0) are never guessed."""


def checkpoint_label_map(raw_labels: Sequence[str], given: Mapping[str, Label]) -> dict[str, Label]:
    out: dict[str, Label] = {}
    unknown = []
    for raw in raw_labels:
        key = raw.strip().casefold()
        label = given.get(key) or ALIASES.get(key.replace("-", "_").replace(" ", "_"))
        if label is None:
            unknown.append(raw)
        else:
            out[raw] = label
    if unknown:
        raise TrainingDataError(f"the checkpoint's labels {', '.join(unknown)} have no psyjudge label; map them with "
                                "--label-map RAW=SAFE|BORDERLINE|HARMFUL")
    return out


def calibrate_checkpoint(checkpoint: Path, loaded: Sequence[Loaded], out: Path, options: TrainOptions,
                         label_map: Mapping[str, Label] | None = None) -> Trained:
    """Wrap a sequence-classification checkpoint someone else fine-tuned (a DeBERTa-v3 safety model, say):
    map its labels, fit calibration and thresholds on part of the labelled rows and report on the rest.
    The checkpoint is referenced where it is, not copied or changed."""
    from judge.classifier.backends import TorchSequence

    rows, dropped = _collect(loaded)
    backend = TorchSequence(checkpoint.resolve(), options.max_length, options.batch_size)
    raw = backend.raw_labels()
    mapping = checkpoint_label_map(raw, label_map or {})
    labels = [label for label in Label if label in set(mapping.values())]
    strays = sorted({str(r.label) for r in rows} - {str(x) for x in labels})
    if strays:
        raise TrainingDataError(f"the data have label(s) {', '.join(strays)} that the checkpoint never gives")
    y = np.array([labels.index(r.label) for r in rows])
    from judge.classifier.model import label_matrix

    log_probs = label_log_probs(backend.logits([r.input for r in rows]), label_matrix(raw, mapping, labels))
    cal_idx, val_idx = stratified_split(y, options.val_fraction, options.seed)
    calibration, thresholds = _calibrate(log_probs[cal_idx], y[cal_idx], labels, options)
    validation = (evaluation_report(calibration.apply(log_probs[val_idx]), y[val_idx], labels, thresholds.threshold)
                  if len(val_idx) else None)
    card = _card(options, loaded, rows, dropped,
                 {"calibration": len(cal_idx), "validation": len(val_idx), "stratified": True, "seed": options.seed},
                 {"label_map": {k: str(v) for k, v in mapping.items()}}, f"{len(cal_idx)} labelled rows", validation,
                 "head")
    card = card.model_copy(update={"method": "imported", "base_model": str(checkpoint.resolve())})
    manifest = Manifest(backend="sequence", labels=labels,
                        sequence=SequenceSpec(checkpoint=str(checkpoint.resolve()), raw_labels=raw, label_map=mapping,
                                              max_length=options.max_length),
                        calibration=calibration, thresholds=thresholds, rubrics=_rubrics(options, loaded), card=card)
    write_manifest(out, manifest)
    return Trained(out, manifest)
