"""`psyjudge programs test`: re-validate saved programs against the sandbox rules, their recorded
hash and their threshold, on the rubric's examples and any labelled data given."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from judge.datasets import Case, example_cases
from judge.programs.sandbox import ProgramRejected, SandboxLimits, check_program
from judge.programs.store import (
    ENTRY,
    Manifest,
    ProgramError,
    judged,
    programs_dir,
    read_manifest,
    sha256_text,
    write_manifest,
)
from judge.programs.synthesis import measure, run_program
from judge.rubrics import Rubric


@dataclass(frozen=True)
class Revalidation:
    question: str
    ok: bool
    detail: str


def revalidate(rubric: Rubric, held_out: Sequence[Case], accept: bool = False,
               limits: SandboxLimits | None = None) -> Iterator[Revalidation]:
    folder = programs_dir(rubric.folder)
    try:
        manifest = read_manifest(folder)
    except ProgramError as exc:
        yield Revalidation("(manifest)", False, str(exc))
        return
    if manifest is None:
        return
    if manifest.rubric != rubric.key:
        yield Revalidation("(manifest)", False, f"written for {manifest.rubric}, the rubric is {rubric.key}: "
                           f"synthesize again")
        return
    shown = example_cases(rubric)
    everything = [*shown, *held_out]
    updated = []
    for entry in manifest.programs:
        path = folder / entry.file
        if not path.is_file():
            yield Revalidation(entry.question, False, f"{path} is missing")
            updated.append(entry)
            continue
        source = path.read_text(encoding="utf-8")
        edited = sha256_text(source) != entry.sha256
        try:
            check_program(source, ENTRY)
        except ProgramRejected as exc:
            yield Revalidation(entry.question, False, f"rejected by the sandbox rules: {exc}")
            updated.append(entry)
            continue
        outcomes = run_program(source, everything, limits or SandboxLimits())
        measured = measure(outcomes, everything, entry.question)
        held = measure(outcomes[len(shown):], held_out, entry.question) if held_out else None
        trusted = judged(measured, held)
        passed = trusted.agreement is not None and trusted.agreement >= entry.threshold
        figures = (f"agreement {trusted.agreement if trusted.agreement is not None else float('nan'):.2f} "
                   f"(threshold {entry.threshold:.2f}), coverage {trusted.coverage:.2f} on {trusted.rows} rows"
                   f"{', ' + str(trusted.errors) + ' errors' if trusted.errors else ''}")
        if edited and not accept:
            yield Revalidation(entry.question, False, f"edited since validation; {figures}; rerun with --accept "
                               f"to record it" if passed else f"edited since validation; {figures}")
            updated.append(entry)
            continue
        yield Revalidation(entry.question, passed, figures)
        if accept and passed:
            entry = entry.model_copy(update={"sha256": sha256_text(source), "measured": measured, "held_out": held})
        updated.append(entry)
    if accept:
        write_manifest(folder, Manifest(rubric=manifest.rubric, programs=updated))
