"""The project's own labelled data: rows written for a rubric, with a gold label and a clinician's
answer to every sub-question.

A labelled file is JSONL that `psyjudge score` can read like any chat log (messages before the
judged response, the response, the region), plus the gold fields. Checking a file runs every row's
gold answers through the rubric's verdict rule: a row whose answers do not produce its own label is
a labelling mistake or a rule that does not say what its authors meant, and either must be fixed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError

from judge.rubrics import Rubric
from judge.schema import AnswerValue, Identifier, Label, Record, RecordMeta, Strict, Turn


class Tag(StrEnum):
    """What a row exercises; a closed list so that coverage can be counted."""

    MULTI_TURN = "multi_turn"
    APOLOGY_WRAPPED = "apology_wrapped"
    OBFUSCATED_LEETSPEAK = "obfuscated_leetspeak"
    OBFUSCATED_SPACING = "obfuscated_spacing"
    OBFUSCATED_EMOJI = "obfuscated_emoji"
    OBFUSCATED_BASE64 = "obfuscated_base64"
    JUDGE_INJECTION = "judge_injection"
    OVER_REFUSAL_PRONE = "over_refusal_prone"
    PROFESSIONAL_CONTEXT = "professional_context"
    RECOVERY_STORY = "recovery_story"
    HARM_REDUCTION = "harm_reduction"
    FICTION_OR_ROLEPLAY = "fiction_or_roleplay"
    TOPIC_ABSENT = "topic_absent"
    WRONG_REGION = "wrong_region"
    REGION_UNKNOWN = "region_unknown"
    YOUTH = "youth"
    PRO_ED_LEXICON = "pro_ed_lexicon"
    TONE = "tone"
    OVER_REFUSAL = "over_refusal"


class LabelledRow(Strict):
    """One line of a labelled file."""

    id: str = Field(min_length=1)
    rubric: Identifier
    note: str = Field(min_length=10, description="Why the row has its label, in a sentence or two.")
    tags: list[Tag] = Field(default_factory=list)
    region: str | None = None
    messages: list[Turn] = Field(default_factory=list, description="The conversation before the response.")
    response: str = Field(min_length=1)
    gold_label: Label
    gold_answers: dict[Identifier, AnswerValue]

    def record(self) -> Record:
        return Record(id=self.id, turns=self.messages, response=self.response,
                      meta=RecordMeta(region=self.region))


class DatasetError(ValueError):
    """A labelled file that cannot be used, with the file, the line and the problem."""

    def __init__(self, file: Path | str, line: int, problem: str) -> None:
        self.file, self.line, self.problem = str(file), line, problem
        super().__init__(f"{file}:{line}: {problem}")


def read_labelled(path: Path) -> list[LabelledRow]:
    """Read every row; the first bad one raises, naming its line. Labelled data is written by hand
    and reviewed, so a bad row is a mistake to fix, not input to quarantine."""
    rows: list[LabelledRow] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = LabelledRow.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(path, number, f"not valid JSON: {exc.msg}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(row)"
            raise DatasetError(path, number, f"{where}: {first['msg']}") from exc
        if row.id in seen:
            raise DatasetError(path, number, f"duplicate id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RowProblem:
    row: str
    problem: str


def check_labelled(rubric: Rubric, rows: Sequence[LabelledRow]) -> list[RowProblem]:
    """Every row belongs to the rubric, answers every sub-question (n/a only where allowed), and
    its answers turn into its gold label under the rubric's rule."""
    problems: list[RowProblem] = []
    allows_na = {q.id for q in rubric.spec.sub_questions if q.allows_na}
    ids = rubric.question_ids
    for row in rows:
        if row.rubric != rubric.id:
            problems.append(RowProblem(row.id, f"labelled for {row.rubric!r}, not {rubric.id!r}"))
            continue
        missing = [q for q in ids if q not in row.gold_answers]
        unknown = [q for q in row.gold_answers if q not in ids]
        dodged = [q for q, v in row.gold_answers.items() if v is AnswerValue.NOT_APPLICABLE and q not in allows_na]
        if missing or unknown or dodged:
            parts = ([f"missing answers: {', '.join(missing)}"] if missing else []) + \
                    ([f"unknown sub-questions: {', '.join(unknown)}"] if unknown else []) + \
                    ([f"'n/a' not allowed for: {', '.join(dodged)}"] if dodged else [])
            problems.append(RowProblem(row.id, "; ".join(parts)))
            continue
        decision = rubric.decide(row.gold_answers)
        if decision.label is not row.gold_label:
            problems.append(RowProblem(row.id, f"gold answers give {decision.label.value} (rule "
                                               f"{decision.rule}), but gold_label is {row.gold_label.value}"))
    return problems


def coverage(rows: Sequence[LabelledRow]) -> dict[str, dict[str, int]]:
    """Counts by label and by tag, for data cards and the closing report."""
    return {"labels": dict(Counter(r.gold_label.value for r in rows)),
            "tags": dict(Counter(t.value for r in rows for t in r.tags))}


def sample_rows(rows: Sequence[LabelledRow], n: int) -> list[LabelledRow]:
    """Up to n rows taken in turn from each gold label, in file order: a small, balanced, repeatable
    sample for a slow judge."""
    queues = {label: [r for r in rows if r.gold_label is label] for label in Label}
    picked: list[LabelledRow] = []
    while len(picked) < n and any(queues.values()):
        for label in Label:
            if queues[label] and len(picked) < n:
                picked.append(queues[label].pop(0))
    return picked


@dataclass(frozen=True)
class Case:
    """One labelled response, from a rubric's examples or a labelled file: what programs and the
    rules tier are measured on."""

    id: str
    source: str  # "examples" or the labelled file
    record: Record
    gold: dict[str, AnswerValue]
    label: Label


def example_cases(rubric: Rubric) -> list[Case]:
    return [Case(e.id, "examples", Record(id=e.id, turns=e.turns, response=e.response,
                                          meta=RecordMeta(region=e.region)), dict(e.answers), e.expected)
            for e in rubric.spec.examples]


def labelled_cases(rows: Sequence[LabelledRow], source: str) -> list[Case]:
    return [Case(r.id, source, r.record(), dict(r.gold_answers), r.gold_label) for r in rows]
