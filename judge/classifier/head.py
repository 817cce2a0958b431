"""A linear head over frozen embeddings, stored as safetensors, npz or JSON, never pickle.

A pickle runs code when it loads, so a model file passed around by a team would be a way in. The
three formats here are data only: safetensors (the default: exact float32, memory-mapped, the
format transformers uses), npz read with allow_pickle=False, and JSON for a head small enough to
read in a diff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_FORMATS = (".safetensors", ".npz", ".json")


class HeadError(ValueError):
    """A head file that cannot be read or does not fit the model it belongs to."""


@dataclass(frozen=True)
class LinearHead:
    """logits = features @ weight.T + bias; weight is (classes, features)."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise HeadError(f"head shapes do not fit: weight {self.weight.shape}, bias {self.bias.shape}")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise HeadError("head has non-finite weights")

    @property
    def classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def features(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, features: np.ndarray) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != self.features:
            raise HeadError(f"head expects {self.features} features, got shape {features.shape}")
        out: np.ndarray = features.astype(np.float32) @ self.weight.T + self.bias
        return out

    def save(self, path: Path) -> None:
        # C order: safetensors writes the buffer as it lies in memory, and a head fitted by scikit-learn
        # can be Fortran-ordered, which would save the weights scrambled.
        weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({"weight": weight, "bias": bias}, str(path), metadata={"format": "psyjudge-linear-head"})
        elif suffix == ".npz":
            np.savez(path, weight=weight, bias=bias)
        elif suffix == ".json":
            path.write_text(json.dumps({"weight": weight.tolist(), "bias": bias.tolist()}) + "\n", encoding="utf-8")
        else:
            raise HeadError(f"{path.name}: a head is saved as one of {', '.join(HEAD_FORMATS)}")

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        suffix = path.suffix.lower()
        try:
            if suffix == ".safetensors":
                from safetensors.numpy import load_file

                arrays = load_file(str(path))
            elif suffix == ".npz":
                # allow_pickle=False refuses object arrays, the one way an npz file can carry code.
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            elif suffix == ".json":
                raw = json.loads(path.read_text(encoding="utf-8"))
                arrays = {k: np.asarray(raw[k], dtype=np.float32) for k in ("weight", "bias")}
            else:
                raise HeadError(f"{path.name}: a head is read from one of {', '.join(HEAD_FORMATS)} "
                                "(pickle is refused: it runs code when it loads)")
        except HeadError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HeadError(f"{path}: cannot read the head: {exc}") from exc
        missing = {"weight", "bias"} - set(arrays)
        if missing:
            raise HeadError(f"{path}: the head lacks {', '.join(sorted(missing))}")
        return cls(np.asarray(arrays["weight"], dtype=np.float32), np.asarray(arrays["bias"], dtype=np.float32))
