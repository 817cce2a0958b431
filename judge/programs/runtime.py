"""Saved programs at scoring time: each answers its sub-question in the rules tier, run in one
sandbox worker per rubric, with its measured agreement as the answer's confidence."""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass, field

from judge.checks import Finding
from judge.normalize import normalize
from judge.programs.sandbox import Sandbox, SandboxLimits
from judge.programs.store import ProgramEntry, load_sources, program_context, programs_dir, read_manifest
from judge.rubrics import Rubric
from judge.schema import AnswerValue, Record


@dataclass
class RubricPrograms:
    """The validated programs of one rubric and the sandbox that runs them."""

    rubric_key: str
    entries: dict[str, ProgramEntry]
    sources: dict[str, str]
    limits: SandboxLimits
    _box: Sandbox | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, rubric: Rubric, limits: SandboxLimits | None = None) -> RubricPrograms | None:
        """None when the rubric has no programs. Raises ProgramError for a manifest of another rubric
        version or a program edited since it was measured."""
        folder = programs_dir(rubric.folder)
        manifest = read_manifest(folder)
        if manifest is None or not manifest.programs:
            return None
        if manifest.rubric != rubric.key:
            return None  # written for another version: not this rubric's programs
        sources = load_sources(folder, manifest, verify=True)
        entries = {e.question: e for e in manifest.programs if e.question in rubric.question_ids}
        return cls(rubric.key, entries, {q: s for q, s in sources.items() if q in entries}, limits or SandboxLimits())

    def _sandbox(self) -> Sandbox:
        if self._box is None:
            self._box = Sandbox(self.sources, self.limits)
            atexit.register(self.close)
        return self._box

    def findings(self, record: Record) -> list[Finding]:
        turns = [{"role": t.role.value, "content": t.content} for t in record.turns]
        context = program_context(record.meta.region, turns, normalize(record.response).text)
        with self._lock:  # one worker, one call at a time
            outcomes = self._sandbox().run_many([(record.response, context)])[0]
        found = []
        for question, outcome in outcomes.items():
            if outcome.answer not in ("yes", "no"):
                continue  # an abstention or a failure answers nothing
            entry = self.entries[question]
            start = record.response.find(outcome.evidence) if outcome.evidence else -1
            span = (start, start + len(outcome.evidence)) if start >= 0 else None
            confidence = entry.agreement
            found.append(Finding(f"program:{question}", question, AnswerValue(outcome.answer), confidence,
                                 entry.precision == "high" and outcome.answer == "yes",
                                 outcome.evidence if span else "", "response" if span else None, span,
                                 f"program written by {entry.model}, agreement {confidence:.2f}"))
        return found

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None
