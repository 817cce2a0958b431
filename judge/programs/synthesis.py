"""PAJAMA-style program synthesis: an LLM writes a judging program per sub-question from the
rubric's own wording and examples; the program is checked, run in the sandbox against labelled
answers, and kept only above an agreement threshold, with its measured agreement and provenance.

PAJAMA is "Program-As-a-Judge for Automated Model Assessment" (Huang, Vishwakarma and Sala, 2025,
arXiv 2506.10403): programs judge, uncertain cases go to an LLM judge.

The prompt shows the rubric's examples; labelled data given besides is held out of the prompt and
is what the threshold is applied to when it has enough rows, so the stored agreement is not the
program grading its own homework.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from judge.datasets import Case, example_cases
from judge.metrics import answer_agreement
from judge.models import JudgeCallError, JudgeModel
from judge.normalize import normalize
from judge.programs.sandbox import Outcome, ProgramRejected, Sandbox, SandboxLimits, check_program
from judge.programs.store import (
    ENTRY,
    Manifest,
    Measured,
    ProgramEntry,
    judged,
    program_context,
    programs_dir,
    read_manifest,
    save_program,
    sha256_text,
)
from judge.rubrics import Rubric
from judge.schema import AnswerValue, Usage, sha256_json


def case_item(case: Case) -> tuple[str, dict[str, Any]]:
    """A case as a program sees it: the response text and its context."""
    turns = [{"role": t.role.value, "content": t.content} for t in case.record.turns]
    return case.record.response, program_context(case.record.meta.region, turns,
                                                 normalize(case.record.response).text)


def _gold(case: Case, question: str) -> AnswerValue | None:
    value = case.gold.get(question)
    return value if value in (AnswerValue.YES, AnswerValue.NO) else None


def measure(outcomes: Sequence[Outcome], cases: Sequence[Case], question: str) -> Measured:
    """Agreement, coverage and yes-precision/recall of a program's answers against gold answers."""
    predicted = [{question: AnswerValue(o.answer)} if o.answer in ("yes", "no") else {} for o in outcomes]
    (q,) = answer_agreement(predicted, [c.gold for c in cases], [question])
    return Measured(
        rows=q.gold_yes + q.gold_no, answered=q.answered, agreement=q.agreed / q.answered if q.answered else None,
        coverage=q.coverage, precision_yes=q.precision_yes, recall_yes=q.recall_yes,
        errors=sum(o.error is not None for o, c in zip(outcomes, cases, strict=True) if _gold(c, question)),
        sources=sorted({c.source for c in cases}),
    )


def run_program(source: str, cases: Sequence[Case], limits: SandboxLimits) -> list[Outcome]:
    with Sandbox({ENTRY: source}, limits) as box:
        return [row[ENTRY] for row in box.run_many([case_item(c) for c in cases])]


# --- the prompt -----------------------------------------------------------------------------------

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("judge.programs", "templates"),
    undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)


def prompt(rubric: Rubric, question_id: str, shown: Sequence[Case]) -> list[dict[str, str]]:
    question = next(q for q in rubric.spec.sub_questions if q.id == question_id)
    lexicon = rubric.spec.lexicons.get(question.lexicon) if question.lexicon else None
    cases = [{"gold": g.value, "response": c.record.response,
              "user_text": "\n".join(t.content for t in c.record.turns if t.role.value == "user")}
             for c in shown if (g := _gold(c, question_id)) is not None]
    context = {"rubric": rubric.spec, "question": question, "lexicon": lexicon, "cases": cases}
    return [{"role": "system", "content": _TEMPLATES.get_template("synthesize_system.j2").render(**context)},
            {"role": "user", "content": _TEMPLATES.get_template("synthesize_user.j2").render(**context)}]


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(reply: str) -> str:
    """The program in a reply: its first fenced block, or the whole reply if that parses as Python."""
    fenced = _FENCE.search(reply)
    if fenced:
        return fenced.group(1).strip() + "\n"
    try:
        ast.parse(reply)
    except SyntaxError as exc:
        raise ProgramRejected("the reply holds no ```python block and is not a Python module", None) from exc
    return reply.strip() + "\n"


# --- one question ---------------------------------------------------------------------------------


@dataclass
class Attempt:
    reply: str
    source: str | None
    rejected: str | None = None
    measured: Measured | None = None
    held_out: Measured | None = None


@dataclass
class Synthesised:
    """What happened for one sub-question."""

    question: str
    kept: bool
    reason: str
    attempts: list[Attempt] = field(default_factory=list)
    entry: ProgramEntry | None = None
    usage: Usage = field(default_factory=Usage)


def _judged_on(attempt: Attempt) -> Measured | None:
    return judged(attempt.measured, attempt.held_out) if attempt.measured is not None else None


def _feedback(attempt: Attempt, threshold: float, wrong: Sequence[str]) -> str:
    if attempt.rejected:
        return (f"The program was rejected before running: {attempt.rejected}. Write it again within the "
                f"rules, in one ```python block.")
    trusted = _judged_on(attempt)
    assert trusted is not None
    agreement = "no answers" if trusted.agreement is None else f"agreement {trusted.agreement:.2f}"
    misses = f" It answered wrongly on examples {', '.join(wrong)}." if wrong else ""
    return (f"On labelled data the program reached {agreement} with coverage {trusted.coverage:.2f}; it needs "
            f"agreement of at least {threshold:.2f} on the rows it answers.{misses} Write a better program: "
            f"abstain where unsure, in one ```python block.")


async def synthesize_question(
    rubric: Rubric, question: str, model: JudgeModel, held_out: Sequence[Case], *,
    threshold: float, min_coverage: float, limits: SandboxLimits, attempts: int = 2,
) -> Synthesised:
    shown = example_cases(rubric)
    messages = prompt(rubric, question, shown)
    prompt_hash = sha256_json(messages)
    everything = [*shown, *held_out]
    result = Synthesised(question, kept=False, reason="")
    for _ in range(attempts):
        try:
            reply = await model.complete(messages, None, scope=f"programs:{rubric.key}:{question}")
        except JudgeCallError as exc:
            result.usage += exc.usage
            result.reason = f"provider error: {exc}"
            return result
        result.usage += reply.usage
        attempt = Attempt(reply.text, None)
        result.attempts.append(attempt)
        wrong: list[str] = []
        try:
            attempt.source = extract_code(reply.text)
            check_program(attempt.source, ENTRY)
        except ProgramRejected as exc:
            attempt.rejected = str(exc)
        else:
            outcomes = run_program(attempt.source, everything, limits)
            attempt.measured = measure(outcomes, everything, question)
            if held_out:
                attempt.held_out = measure(outcomes[len(shown):], held_out, question)
            trusted = _judged_on(attempt)
            assert trusted is not None
            if (trusted.agreement is not None and trusted.agreement >= threshold
                    and trusted.coverage >= min_coverage):
                model.remember(reply)
                result.kept, result.reason = True, "kept"
                result.entry = ProgramEntry(
                    question=question, file=f"{question}.py", sha256=sha256_text(attempt.source),
                    model=model.config.model, prompt_sha256=prompt_hash,
                    created=datetime.now(UTC).date(), threshold=threshold, measured=attempt.measured,
                    held_out=attempt.held_out)
                return result
            wrong = [c.id for c, o in zip(shown, outcomes[:len(shown)], strict=True)
                     if o.answer in ("yes", "no") and (g := _gold(c, question)) is not None and o.answer != g.value]
        result.reason = attempt.rejected or _feedback(attempt, threshold, wrong)
        messages = [*messages, {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": _feedback(attempt, threshold, wrong)}]
    why = result.attempts[-1].rejected or "below threshold"
    result.reason = f"not kept after {len(result.attempts)} attempt(s): {why}"
    return result


async def synthesize(
    rubric: Rubric, model: JudgeModel, held_out: Sequence[Case], *, questions: Sequence[str] | None = None,
    threshold: float = 0.85, min_coverage: float = 0.2, limits: SandboxLimits | None = None,
    folder: Path | None = None, progress: Callable[[Synthesised], None] | None = None,
) -> list[Synthesised]:
    """Write, validate and save a program for each asked sub-question (all by default), one at a
    time (each is a few calls; the sandbox runs are the slow part). Kept programs are saved as they
    are kept, so an interrupted run keeps what it finished."""
    wanted = list(questions or rubric.question_ids)
    unknown = [q for q in wanted if q not in rubric.question_ids]
    if unknown:
        raise ValueError(f"unknown sub-question(s) for {rubric.key}: {', '.join(unknown)}")
    target = folder or programs_dir(rubric.folder)
    manifest = read_manifest(target) or Manifest(rubric=rubric.key)
    if manifest.rubric != rubric.key:
        manifest = Manifest(rubric=rubric.key)  # programs of another version are not this rubric's
    results = []
    for question in wanted:
        outcome = await synthesize_question(rubric, question, model, held_out, threshold=threshold,
                                            min_coverage=min_coverage, limits=limits or SandboxLimits())
        if outcome.kept and outcome.entry is not None:
            source = outcome.attempts[-1].source
            assert source is not None
            manifest = save_program(target, manifest, outcome.entry, source)
        results.append(outcome)
        if progress is not None:
            progress(outcome)
    return results
