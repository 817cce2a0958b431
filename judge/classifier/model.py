"""A loaded classifier: the back-end's logits, mapped to psyjudge labels, calibrated, and read
against the per-label thresholds into a decision or an abstention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from judge.classifier.backends import (
    ClassifierUnavailable,
    HeadBackend,
    LogitBackend,
    OnnxEncoder,
    OnnxSequence,
    TorchEncoder,
    TorchSequence,
    resolve_model_path,
)
from judge.classifier.bundle import BundleError, Manifest, Runtime, read_manifest
from judge.classifier.calibration import decide
from judge.classifier.head import HeadError, LinearHead
from judge.classifier.inputs import ModelInput
from judge.schema import Label

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
"""The shipped default: a head over all-MiniLM-L6-v2 trained on the project's own datasets/."""


@dataclass(frozen=True)
class Predictions:
    labels: list[Label]
    probs: np.ndarray  # (n, labels) calibrated probabilities
    index: np.ndarray  # argmax column
    confidence: np.ndarray  # its probability
    decided: np.ndarray  # the confidence clears that label's threshold

    def label(self, row: int) -> Label:
        return self.labels[int(self.index[row])]


def label_matrix(raw_labels: Sequence[str], label_map: dict[str, Label], labels: Sequence[Label]) -> np.ndarray:
    """(raw classes, psyjudge labels) 0/1 matrix: several raw classes (harm categories, say) may feed one label."""
    matrix = np.zeros((len(raw_labels), len(labels)), dtype=np.float32)
    for i, raw in enumerate(raw_labels):
        matrix[i, list(labels).index(label_map[raw])] = 1.0
    return matrix


def label_log_probs(raw_logits: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """Log-probabilities over psyjudge labels: the calibration's input. For a model whose classes are
    the labels themselves these are the logits shifted per row, which the softmax does not see."""
    shifted = raw_logits - raw_logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if matrix is None:
        out: np.ndarray = log_probs
        return out
    summed: np.ndarray = np.exp(log_probs) @ matrix
    result: np.ndarray = np.log(np.clip(summed, 1e-12, None))
    return result


class Classifier:
    def __init__(self, folder: Path, manifest: Manifest, backend: LogitBackend, runtime: Runtime) -> None:
        self.folder, self.manifest, self.backend, self.runtime = folder, manifest, backend, runtime
        self.labels = list(manifest.labels)
        seq = manifest.sequence
        self.matrix = label_matrix(seq.raw_labels, seq.label_map, self.labels) if seq else None

    @property
    def name(self) -> str:
        return f"{self.manifest.card.name} ({self.manifest.backend}, {self.runtime})"

    @classmethod
    def load(cls, folder: Path | None = None, runtime: Runtime = "torch", batch_size: int = 32) -> Classifier:
        folder = (folder or DEFAULT_MODEL_DIR).resolve()
        manifest = read_manifest(folder)
        return cls(folder, manifest, build_backend(folder, manifest, runtime, batch_size), runtime)

    def log_probs(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        """Uncalibrated log-probabilities over self.labels (what calibration is fitted on)."""
        return label_log_probs(self.backend.logits(inputs), self.matrix)

    def calibrated(self, log_probs: np.ndarray) -> np.ndarray:
        return self.manifest.calibration.apply(log_probs)

    def predictions(self, probs: np.ndarray) -> Predictions:
        index, confidence, decided = decide(probs, [str(x) for x in self.labels], self.manifest.thresholds.threshold)
        return Predictions(self.labels, probs, index, confidence, decided)

    def predict(self, inputs: Sequence[ModelInput]) -> Predictions:
        if not inputs:
            # decide() refuses an empty array (it cannot tell probabilities from logits there).
            return Predictions(self.labels, np.zeros((0, len(self.labels))), np.zeros(0, dtype=np.int64),
                               np.zeros(0), np.zeros(0, dtype=bool))
        return self.predictions(self.calibrated(self.log_probs(inputs)))


def check_loadable(folder: Path | None = None, runtime: Runtime = "torch") -> Manifest:
    """Whether a classifier can load here, without loading its weights: the manifest reads, torch imports,
    the encoder or checkpoint folder exists and the runtime's ONNX file is recorded. Raises
    ClassifierUnavailable or BundleError saying what to do."""
    from judge.classifier.backends import torch_module

    folder = (folder or DEFAULT_MODEL_DIR).resolve()
    manifest = read_manifest(folder)
    torch_module()
    spec = manifest.encoder.path if manifest.encoder else manifest.sequence.checkpoint if manifest.sequence else ""
    resolve_model_path(spec, folder)
    onnx_file(folder, manifest, runtime)
    return manifest


def onnx_file(folder: Path, manifest: Manifest, runtime: Runtime) -> Path | None:
    """The ONNX file a runtime runs (None for torch); missing or unrecorded is ClassifierUnavailable."""
    if runtime == "torch":
        return None
    if manifest.onnx is None:
        raise ClassifierUnavailable(f"{folder}: no ONNX export; run `psyjudge classifier export-onnx {folder}`")
    name = manifest.onnx.int8 if runtime == "onnx-int8" else manifest.onnx.fp32
    if name is None:
        raise ClassifierUnavailable(f"{folder}: no int8 export; run `psyjudge classifier export-onnx --int8`")
    path = folder / name
    if not path.is_file():
        raise ClassifierUnavailable(f"{path}: named in the manifest but missing")
    return path


def build_backend(folder: Path, manifest: Manifest, runtime: Runtime, batch_size: int = 32) -> LogitBackend:
    exported = onnx_file(folder, manifest, runtime)
    if manifest.backend == "head":
        assert manifest.encoder is not None and manifest.head is not None  # the manifest validator checked
        spec = manifest.encoder
        path = resolve_model_path(spec.path, folder)
        try:
            head = LinearHead.load(folder / manifest.head.file)
        except HeadError as exc:
            raise BundleError(str(exc)) from exc
        if head.classes != len(manifest.labels):
            raise BundleError(f"{folder}: the head gives {head.classes} classes, the manifest names "
                              f"{len(manifest.labels)} labels")
        encoder = (TorchEncoder(path, spec.pooling, spec.normalize, spec.max_length, batch_size) if exported is None
                   else OnnxEncoder(exported, path, spec.pooling, spec.normalize, spec.max_length, batch_size))
        expected = encoder.dim * (2 if manifest.head.features == "response+context" else 1)
        if head.features != expected:
            raise BundleError(f"{folder}: the head reads {head.features} features; this encoder gives {expected}")
        return HeadBackend(encoder, head, manifest.head.features)
    assert manifest.sequence is not None
    seq = manifest.sequence
    path = resolve_model_path(seq.checkpoint, folder)
    if exported is not None:
        return OnnxSequence(exported, path, seq.max_length, batch_size)
    backend = TorchSequence(path, seq.max_length, batch_size)
    if backend.raw_labels() != seq.raw_labels:
        raise BundleError(f"{folder}: the checkpoint's labels {backend.raw_labels()} are not the manifest's "
                          f"{seq.raw_labels}")
    return backend
