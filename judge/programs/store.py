"""Saved judging programs: reviewable files beside the rubric, with their provenance and measured
agreement, and their use at scoring time.

Layout, in the rubric's folder:

    programs/
      manifest.yaml        which programs exist, who wrote them (model, prompt hash, date), how they
                           were validated and what they scored
      gives_method.py      one program per sub-question, plain Python a reviewer can read

Nothing is re-synthesised at scoring time. A program whose file no longer matches the sha256 in the
manifest has been edited since it was measured: it is refused until `psyjudge programs test`
re-validates it, so an unmeasured change never answers a question.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from judge.atomic import write_text_atomic
from judge.schema import Identifier, Strict

PROGRAMS_DIR = "programs"
MANIFEST = "manifest.yaml"
ENTRY = "judge"


class ProgramError(ValueError):
    """A programs folder or manifest that cannot be used."""


class Measured(Strict):
    """How a program did against labelled answers to its question."""

    rows: int = Field(ge=0, description="Rows with a gold yes/no answer to the question.")
    answered: int = Field(ge=0, description="Rows the program did not abstain on.")
    agreement: float | None = Field(description="Share of answered rows where it gave the gold answer.")
    coverage: float = Field(ge=0.0, le=1.0, description="answered / rows.")
    precision_yes: float | None = None
    recall_yes: float | None = None
    errors: int = Field(default=0, ge=0, description="Rows where the program failed (exception, limit).")
    sources: list[str] = Field(default_factory=list, description="What it was measured on.")


MIN_HELD_OUT = 10
"""Held-out rows needed before a program is judged on them rather than on every row."""


def judged(measured: Measured, held_out: Measured | None) -> Measured:
    """The figure to trust: on the held-out rows when there are enough, otherwise on every row."""
    return held_out if held_out is not None and held_out.rows >= MIN_HELD_OUT else measured


class ProgramEntry(Strict):
    question: Identifier
    file: str = Field(pattern=r"^[a-z][a-z0-9_]*\.py$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model: str = Field(description="The LLM that wrote it.")
    prompt_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: date
    threshold: float = Field(ge=0.0, le=1.0, description="The agreement it had to reach to be kept.")
    measured: Measured = Field(description="On every row: the examples shown in the prompt and the rest.")
    held_out: Measured | None = Field(default=None, description="On the labelled rows not shown in the prompt.")
    precision: Literal["normal", "high"] = Field(
        default="normal", description="high lets its 'yes' decide a label; only a reviewer sets it, after "
        "reading the program and its measured precision.")


    @property
    def agreement(self) -> float:
        return judged(self.measured, self.held_out).agreement or 0.0


class Manifest(Strict):
    rubric: str = Field(description="id@version the programs were written for.")
    programs: list[ProgramEntry] = Field(default_factory=list)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def programs_dir(rubric_folder: Path) -> Path:
    return rubric_folder / PROGRAMS_DIR


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a programs folder, or None when there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Manifest.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ProgramError(f"{path}: {exc}") from exc


_HEADER = ("# Judging programs written by an LLM from this rubric (psyjudge programs synthesize) and\n"
           "# validated against labelled answers. Read each program before trusting it; set precision: high\n"
           "# only after review. `psyjudge programs test` re-validates them after any edit.\n")


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)
    path = folder / MANIFEST
    write_text_atomic(path, _HEADER + body)
    return path


def save_program(folder: Path, manifest: Manifest, entry: ProgramEntry, source: str) -> Manifest:
    """Write one program and its manifest entry (replacing any earlier one for the question)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / entry.file, source)
    kept = [p for p in manifest.programs if p.question != entry.question]
    updated = Manifest(rubric=manifest.rubric, programs=sorted([*kept, entry], key=lambda p: p.question))
    write_manifest(folder, updated)
    return updated


def load_sources(folder: Path, manifest: Manifest, verify: bool = True) -> dict[str, str]:
    """question -> program source. With `verify`, a file that differs from its manifest hash is an error."""
    sources: dict[str, str] = {}
    for entry in manifest.programs:
        path = folder / entry.file
        if not path.is_file():
            raise ProgramError(f"{path}: listed in {MANIFEST} but missing")
        source = path.read_text(encoding="utf-8")
        if verify and sha256_text(source) != entry.sha256:
            raise ProgramError(f"{path}: edited since it was validated (sha256 differs from {MANIFEST}); "
                               f"run `psyjudge programs test` to re-measure it")
        sources[entry.question] = source
    return sources


def program_context(region: str | None, turns: Sequence[Mapping[str, str]], normalized: str) -> dict[str, Any]:
    """What a program sees besides the response text: plain JSON values only."""
    user = [t["content"] for t in turns if t.get("role") == "user"]
    return {"region": region or "", "turns": [dict(t) for t in turns], "user_text": "\n".join(user),
            "normalized": normalized}
