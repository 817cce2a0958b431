"""The studio's test run: a rubric's examples (and a sample of a data file) through the cascade.

Every case is scored twice, under the saved rubric and under the draft, by the same tiers the
studio was started with, so the page can say both whether each example passes and which labels
the edit changes (the regression diff). The saved rubric's outcomes are kept per file hash, so
repeated test runs while editing only score the draft.

Pass and fail are judged on decided labels only. A case no tier was sure about (the rules tier
abstained and no judge model is configured) is "undecided", shown with the label it leans to, and
never counted as a pass: that is what would reach the LLM judge in a real run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from judge.cascade import Cascade
from judge.datasets import DatasetError, LabelledRow, read_labelled, sample_rows
from judge.ingest import InputError, read_records
from judge.rubrics import Rubric, example_records
from judge.runner import judge_stream
from judge.schema import Record, Verdict

PASS, FAIL, UNDECIDED, ERRORED, UNLABELLED = "pass", "fail", "undecided", "error", "unlabelled"


@dataclass(frozen=True)
class AnswerView:
    question: str
    value: str
    evidence: str
    source: str | None
    tier: str
    clinician: str | None
    """The answer written in the example or the labelled row (None for an unlabelled log row)."""

    @property
    def disagrees(self) -> bool:
        return self.clinician is not None and self.clinician != self.value


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    kind: str  # "example" or "data"
    expected: str | None
    label: str
    status: str
    decided_by: str | None
    confidence: float | None
    rule: str | None
    error: str | None
    answers: tuple[AnswerView, ...]
    rule_label: str | None = None
    """For an example: the label the verdict rule gives from the clinician's own answers."""


@dataclass(frozen=True)
class Change:
    """One case whose outcome the edit changes."""

    case_id: str
    kind: str
    expected: str | None
    before: CaseOutcome | None
    after: CaseOutcome | None
    answers_changed: tuple[tuple[str, str, str], ...] = ()
    """(question, saved answer, draft answer) for answers the tiers now give differently."""


@dataclass
class RunReport:
    outcomes: list[CaseOutcome]
    changes: list[Change]
    tiers: list[str]
    data_note: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _status(verdict: Verdict, expected: str | None) -> str:
    if verdict.error and not verdict.degraded:
        return ERRORED
    if verdict.degraded or verdict.decided_by is None:
        return UNDECIDED
    if expected is None:
        return UNLABELLED
    return PASS if verdict.label_name == expected else FAIL


def _outcome(verdict: Verdict, case_id: str, kind: str, expected: str | None,
             clinician: dict[str, str] | None, rule_label: str | None = None) -> CaseOutcome:
    answers: dict[str, AnswerView] = {}
    for tier in verdict.tiers:  # later (more capable) tiers override earlier answers to the same question
        for a in tier.answers:
            answers[a.question_id] = AnswerView(a.question_id, a.value.value, a.evidence, a.source, tier.tier,
                                                (clinician or {}).get(a.question_id))
    decided = next((t for t in verdict.tiers if t.tier == verdict.decided_by), None)
    rule = (decided.fallback_rule if verdict.degraded else decided.fired_rule) if decided else None
    if rule is None:
        rule = next((t.fallback_rule for t in verdict.tiers if t.fallback_rule), None)
    return CaseOutcome(case_id, kind, expected, verdict.label_name, _status(verdict, expected), verdict.decided_by,
                       decided.confidence if decided else None, rule, verdict.error, tuple(answers.values()),
                       rule_label)


@dataclass(frozen=True)
class DataSample:
    """Rows of the studio's --data file for this rubric: labelled rows, or plain log records."""

    records: tuple[Record, ...]
    expected: dict[str, str]
    gold_answers: dict[str, dict[str, str]]
    note: str


def load_data(path: Path, rubric_id: str, size: int) -> DataSample:
    """A sample of the data file: a labelled file (datasets/<rubric>/examples.jsonl format) gives
    rows of this rubric, balanced across gold labels; any other log gives its first records."""
    try:
        rows: list[LabelledRow] = read_labelled(path)
    except DatasetError:
        rows = []
    except OSError as exc:
        return DataSample((), {}, {}, f"{path}: cannot read: {exc}")
    if rows:
        mine = [r for r in rows if r.rubric == rubric_id]
        chosen = sample_rows(mine, size) if mine else []
        note = (f"{len(chosen)} of {len(mine)} labelled rows of {path.name} for {rubric_id}, balanced by gold label"
                if mine else f"{path.name} has no labelled rows for {rubric_id}")
        return DataSample(tuple(r.record() for r in chosen), {r.id: r.gold_label.value for r in chosen},
                          {r.id: {k: v.value for k, v in r.gold_answers.items()} for r in chosen}, note)
    try:
        ingested = read_records(path)
    except InputError as exc:
        return DataSample((), {}, {}, f"{path}: {exc}")
    chosen_records = ingested.records[:size]
    skipped = f"; {len(ingested.quarantined)} unreadable row(s) left out" if ingested.quarantined else ""
    return DataSample(tuple(chosen_records), {}, {},
                      f"the first {len(chosen_records)} of {len(ingested.records)} records of {path.name} "
                      f"(no gold labels){skipped}")


async def _judge(records: Sequence[Record], rubric: Rubric, cascade: Cascade, concurrency: int) -> dict[str, Verdict]:
    out: dict[str, Verdict] = {}
    async for verdict in judge_stream([(r, rubric) for r in records], cascade, concurrency):
        out[verdict.record_id] = verdict
    return out


async def score(rubric: Rubric, cascade: Cascade, data: DataSample | None, concurrency: int = 4) -> list[CaseOutcome]:
    """Every example of the rubric, then the data sample, through the cascade."""
    examples = example_records(rubric)
    records = [*examples, *(data.records if data else ())]
    verdicts = await _judge(records, rubric, cascade, concurrency)
    outcomes = []
    for example, record in zip(rubric.spec.examples, examples, strict=True):
        clinician = {k: v.value for k, v in example.answers.items()}
        try:
            rule_label = rubric.decide(example.answers).label.value
        except KeyError:
            rule_label = None
        outcomes.append(_outcome(verdicts[record.id], example.id, "example", example.expected.value, clinician,
                                 rule_label))
    for record in data.records if data else ():
        assert data is not None
        outcomes.append(_outcome(verdicts[record.id], record.id, "data", data.expected.get(record.id),
                                 data.gold_answers.get(record.id)))
    return outcomes


def regression(saved: Sequence[CaseOutcome], draft: Sequence[CaseOutcome]) -> list[Change]:
    """Cases whose label or status the draft changes, and cases it adds or removes."""
    before = {(o.kind, o.case_id): o for o in saved}
    after = {(o.kind, o.case_id): o for o in draft}
    changes = []
    for key in [*after, *(k for k in before if k not in after)]:
        old, new = before.get(key), after.get(key)
        if old is not None and new is not None and (old.label, old.status) == (new.label, new.status):
            continue
        moved: tuple[tuple[str, str, str], ...] = ()
        if old is not None and new is not None:
            was = {a.question: a.value for a in old.answers}
            now = {a.question: a.value for a in new.answers}
            moved = tuple((q, was.get(q, "-"), now.get(q, "-")) for q in dict.fromkeys([*was, *now])
                          if was.get(q) != now.get(q))
        ref = new or old
        assert ref is not None
        changes.append(Change(key[1], key[0], ref.expected, old, new, moved))
    return changes


class CaseRunner:
    """Scores drafts against the saved rubric with one cascade, remembering the saved outcomes."""

    def __init__(self, cascade: Cascade, tiers: list[str], data_path: Path | None, concurrency: int = 4) -> None:
        self.cascade = cascade
        self.tiers = tiers
        self.data_path = data_path
        self.concurrency = concurrency
        self._saved: dict[tuple[str, tuple[str, int, int] | None], list[CaseOutcome]] = {}
        self._data: dict[tuple[str, int, int], DataSample] = {}
        self._lock = asyncio.Lock()

    def _sample(self, rubric_id: str, size: int) -> tuple[tuple[str, int, int] | None, DataSample | None]:
        """The data sample and its key, read once per rubric and size while the file is unchanged (a chat
        log can be large, and a clinician runs the test after every few edits)."""
        if self.data_path is None or size <= 0:
            return None, None
        try:
            stamp = self.data_path.stat().st_mtime_ns
        except OSError:
            stamp = -1
        key = (rubric_id, size, stamp)
        if key not in self._data:
            self._data[key] = load_data(self.data_path, rubric_id, size)
        return key, self._data[key]

    async def run(self, saved: Rubric, draft: Rubric, sample: int) -> RunReport:
        data_key, data = self._sample(saved.id, sample)
        key = (saved.sha256, data_key)
        async with self._lock:  # one test run at a time: the tiers share a judge and two cores
            if key not in self._saved:
                self._saved[key] = await score(saved, self.cascade, data, self.concurrency)
            before = self._saved[key]
            after = before if draft.sha256 == saved.sha256 else await score(draft, self.cascade, data,
                                                                                self.concurrency)
        counts: dict[str, int] = {}
        for outcome in after:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return RunReport(after, regression(before, after), self.tiers, data.note if data else None, counts)
