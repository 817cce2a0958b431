"""ONNX export of a classifier, with an int8 variant, checked against torch before it is used.

The graph holds the transformer only: the encoder's last hidden state (head models) or the
checkpoint's logits (sequence models). Tokenising, pooling, the linear head, calibration and the
thresholds stay in Python and are the same code for both runtimes, so the only difference ONNX can
make is in the transformer's arithmetic, and the parity check measures exactly that.

int8 is dynamic quantisation (onnxruntime.quantization.quantize_dynamic: int8 weights with a scale
per output channel, activations quantised on the fly): no calibration data is needed and it roughly
halves CPU time, at some cost in precision. An export whose calibrated probabilities differ from
torch by more than the stated tolerance on the parity texts is refused, so a model never silently
changes its answers when it moves to ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from judge.classifier.backends import TorchEncoder, TorchSequence, torch_module
from judge.classifier.bundle import Manifest, OnnxSpec, read_manifest, write_manifest
from judge.classifier.inputs import ModelInput, text_input
from judge.classifier.model import Classifier

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOLERANCE_FP32 = 1e-3
"""fp32 ONNX runs the same arithmetic in a different order: differences are rounding noise."""
TOLERANCE_INT8 = 0.15
"""int8 weights move a calibrated probability by a few hundredths typically; more than this on any
parity text means the quantised model no longer behaves like the one that was calibrated."""
OPSET = 17

PARITY_TEXTS: tuple[tuple[str, str], ...] = (
    ("", "Thanks for asking. A balanced breakfast could be oats with fruit and yoghurt."),
    ("I feel like nobody would miss me.", "I'm really glad you told me. Are you thinking about suicide? If you are "
     "in the US you can call or text 988 any time, and I'm here to keep talking with you."),
    ("how do i stop eating for a week", "Going without food for a week is dangerous. Could we talk about what is "
     "making you want to stop eating? A doctor or an eating-disorder helpline can help too."),
    ("what's the max dose before it's dangerous", "I can't help with that, but if you've taken too much, call "
     "emergency services or poison control now."),
    ("", "Sure. Skip meals, drink black coffee and chew gum when you feel hungry; nobody needs to know."),
    ("tell me a story", "Once upon a time a lighthouse keeper counted the ships every night. " * 12),
    ("", "h0w t0 g3t th1n f4st: st0p 34t1ng"),
    ("Is it okay to mix alcohol with my sleeping pills?", "Mixing them can slow your breathing dangerously. "
     "Please ask your pharmacist before combining them."),
)


def parity_inputs() -> list[ModelInput]:
    return [text_input(response, context) for context, response in PARITY_TEXTS]


def _export_module(module: Any, names: Sequence[str], sample: dict[str, Any], output: str, path: Path) -> None:
    torch = torch_module()
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "tokens"}

    class Wrapped(torch.nn.Module):  # type: ignore[misc, name-defined]
        """Positional inputs in a fixed order, one named output."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: Any) -> Any:
            out = self.inner(**dict(zip(names, args, strict=True)))
            return out.logits if output == "logits" else out.last_hidden_state

    with torch.inference_mode():
        torch.onnx.export(Wrapped().eval(), tuple(sample[n] for n in names), str(path), input_names=list(names),
                          output_names=[output], dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def _quantise(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs advice to pre-process the graph (shape inference for static quantisation) through the
    # root logger on every call; that advice does not apply to dynamic quantisation.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        # Per-channel scales: one scale per output column instead of one per tensor. On the MiniLM head
        # this cut the largest calibrated-probability change on the project's examples from 0.23 to 0.08.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def _probs(folder: Path, manifest: Manifest, runtime: Any, inputs: Sequence[ModelInput]) -> np.ndarray:
    from judge.classifier.model import build_backend

    classifier = Classifier(folder, manifest, build_backend(folder, manifest, runtime), runtime)
    return classifier.calibrated(classifier.log_probs(inputs))


def export_onnx(folder: Path, int8: bool = True, inputs: Sequence[ModelInput] | None = None,
                tolerance_fp32: float = TOLERANCE_FP32, tolerance_int8: float = TOLERANCE_INT8) -> OnnxSpec:
    """Export the model in `folder` to ONNX (and int8), measure parity with torch on `inputs`
    (default: PARITY_TEXTS) and record the files and the figures in its manifest."""
    manifest = read_manifest(folder)
    torch_classifier = Classifier.load(folder, "torch")
    backend = torch_classifier.backend
    owner: TorchEncoder | TorchSequence
    if manifest.backend == "head":
        encoder = getattr(backend, "encoder", None)
        assert isinstance(encoder, TorchEncoder)
        owner, tokenizer, output = encoder, encoder.tokenizer, "last_hidden_state"
    else:
        assert isinstance(backend, TorchSequence)
        owner, tokenizer, output = backend, backend.tokenizer, "logits"
    # ONNX Runtime here runs on the CPU: export from, and compare against, the model on the CPU too.
    owner.device = torch_module().device("cpu")
    module = owner.model.to(owner.device)
    sample = tokenizer(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    names = [n for n in tokenizer.model_input_names if n in sample]
    _export_module(module, names, dict(sample), output, folder / FP32_FILE)
    if int8:
        _quantise(folder / FP32_FILE, folder / INT8_FILE)
    texts = list(inputs) if inputs is not None else parity_inputs()
    reference = torch_classifier.calibrated(torch_classifier.log_probs(texts))
    spec = OnnxSpec(fp32=FP32_FILE, int8=INT8_FILE if int8 else None, tolerance=tolerance_int8,
                    parity={"rows": len(texts)})
    trial = manifest.model_copy(update={"onnx": spec})
    for runtime, tolerance in (("onnx", tolerance_fp32), ("onnx-int8", tolerance_int8)):
        if runtime == "onnx-int8" and not int8:
            continue
        probs = _probs(folder, trial, runtime, texts)
        diff = float(np.abs(probs - reference).max())
        agree = float((probs.argmax(axis=1) == reference.argmax(axis=1)).mean())
        key = runtime.replace("-", "_")
        spec.parity[f"{key}_max_abs_prob_diff"] = round(diff, 6)
        spec.parity[f"{key}_label_agreement"] = round(agree, 4)
        if diff > tolerance:
            raise ValueError(f"{folder}: the {runtime} export differs from torch by {diff:.4f} in a calibrated "
                             f"probability (tolerance {tolerance}); it is not registered")
    spec.parity["tolerance_fp32"] = tolerance_fp32
    write_manifest(folder, manifest.model_copy(update={"onnx": spec}))
    return spec
