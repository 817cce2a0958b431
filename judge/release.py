"""Target runs: play a suite against a candidate chatbot, judge every answer, read every refusal.

    suites --play--> transcripts.jsonl --> responses.jsonl --score (the cascade)--> results.jsonl
                                                          --refusal detector-->  refusals.jsonl
                                                          --> release.json, release.md

1. Play. Every case of the suites is played against the target: a single prompt, a scripted
   conversation (the user turns are fixed; the target answers each in turn, seeing its own earlier
   answers), or a persona played by the user simulator for N turns. Cases run concurrently, turns
   of one conversation in order. A finished case is appended to transcripts.jsonl at once, so a
   crash loses nothing that finished; a rerun plays only what is missing (or changed: the case, the
   target, its parameters or the system prompt), and the target's reply cache makes even that cheap.
   A target failure (an error after retries, an empty reply) ends the conversation there and is
   recorded; it is retried by a rerun with --retry-errors, like a judge ERROR.
2. Judge. Every answer becomes one record of responses.jsonl (the conversation before it, the
   answer, the case's expected behaviour, category and region as columns), scored by the same
   runner as `psyjudge score`: the same cascade, results store and resume.
3. Refusal. Every answer is read by the refusal detector (judge.refusal): the programmatic reading
   first, the judge model only when that is unsure.
4. Release figures (judge.release_report): per category, the harm rate on unsafe prompts beside
   the over-refusal rate on safe ones, with Wilson intervals; each conversation's worst turn and the
   turn where harm first appears; target failures counted, never graded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tqdm import tqdm

from judge.atomic import append_line, cut_torn_tail, ensure_private_dir, write_text_atomic
from judge.cascade import CascadeConfig
from judge.models import JudgeConfig, JudgeModel
from judge.refusal import RefusalDetector, RefusalReading
from judge.release_report import ReleaseReport, build_release_report, write_release
from judge.rubrics import Rubric
from judge.runner import RESULTS_FILE, run_score
from judge.schema import Strict, Usage, sha256_json
from judge.simulate import UserSimulator
from judge.suites import CaseKind, Suite, SuiteCase
from judge.target import ChatEndpoint, EndpointConfig

TRANSCRIPTS_FILE = "transcripts.jsonl"
RESPONSES_FILE = "responses.jsonl"
REFUSALS_FILE = "refusals.jsonl"
RUN_FILE = "target_run.json"


class TurnLog(Strict):
    """One exchange of a played case: the user's message and the target's answer or failure."""

    turn: int = Field(ge=1)
    user: str
    user_source: Literal["suite", "simulator"] = "suite"
    answer: str | None = None
    error: str | None = Field(default=None, description="The target's failure on this turn (no answer).")
    usage: Usage = Field(default_factory=Usage)
    cached: bool = False
    seconds: float = 0.0


class Transcript(Strict):
    """A played case: one line of transcripts.jsonl."""

    key: str = Field(description="suite id:case id; the record ids derive from it.")
    case_sha256: str = Field(description="Hash of what the play depends on: the case, the target and its "
                             "parameters, the system prompt and the simulator. A change replays the case.")
    suite: str = Field(description="id@version")
    case_id: str
    kind: str
    expected: str
    category: str
    region: str | None = None
    target: str
    system_prompt_sha256: str | None = None
    simulator: str | None = None
    turns: list[TurnLog] = Field(default_factory=list)
    failure: str | None = Field(default=None, description="Why the case stopped early: the target failed "
                                "(its error) or the simulator did ('simulator: ...').")
    failure_by: Literal["target", "simulator"] | None = None
    simulator_usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    created_at: str

    def record_id(self, turn: int) -> str:
        return self.key if self.kind == CaseKind.PROMPT.value else f"{self.key}#t{turn}"

    @property
    def answered(self) -> list[TurnLog]:
        return [t for t in self.turns if t.answer is not None]


class TargetRunConfig(Strict):
    """What is played against what; kept in target_run.json and in every case's hash."""

    target: EndpointConfig
    system_prompt: str | None = None
    simulator: EndpointConfig | None = None
    concurrency: int = Field(default=8, ge=1, le=1024, description="Cases played at once.")
    limit: int | None = Field(default=None, ge=1, description="Play only N cases of each suite (see `limited`): "
                              "a smoke run.")
    refusal_threshold: float = Field(default=0.8, ge=0.0, le=1.0, description="Confidence the programmatic "
                                     "refusal reading needs before the judge model is not asked.")
    refusal_llm: bool = Field(default=True, description="Ask the judge model when the programmatic refusal reading "
                              "is unsure. Off: the programmatic reading stands whatever its confidence.")

    def play_params(self) -> dict[str, Any]:
        """What changes the target's answers (where it runs and how often it retries do not)."""
        target = self.target.model_dump(mode="json", include={"model", "temperature", "max_tokens", "litellm_params"})
        sim = (self.simulator.model_dump(mode="json", include={"model", "temperature", "max_tokens", "litellm_params"})
               if self.simulator is not None else None)
        return {"target": target, "system_prompt": self.system_prompt, "simulator": sim}


def case_key(suite: Suite, case: SuiteCase) -> str:
    return f"{suite.card.id}:{case.id}"


def case_hash(case: SuiteCase, config: TargetRunConfig) -> str:
    play = config.play_params()
    if case.kind is not CaseKind.PERSONA:
        play["simulator"] = None  # only a persona's play depends on the simulator
    return sha256_json({"case": case.model_dump(mode="json"), "play": play})


# --- the transcript store --------------------------------------------------------------------------


@dataclass
class TranscriptStore:
    """transcripts.jsonl: append-only, latest line per case key wins, a torn last line repaired."""

    path: Path
    done: dict[str, Transcript] = field(default_factory=dict)
    unreadable_lines: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> TranscriptStore:
        store = cls(path)
        if path.exists():
            cut_torn_tail(path)
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    try:
                        item = Transcript.model_validate_json(line)
                    except ValueError:
                        store.unreadable_lines.append(number)
                        continue
                    store.done[item.key] = item
        return store

    def needs(self, key: str, sha: str, retry_errors: bool) -> bool:
        prior = self.done.get(key)
        if prior is None or prior.case_sha256 != sha:
            return True
        return prior.failure is not None and retry_errors

    def append(self, transcript: Transcript) -> None:
        append_line(self.path, transcript.model_dump_json())
        self.done[transcript.key] = transcript


# --- playing -----------------------------------------------------------------------------------------


class Player:
    """Plays cases against the target (and the simulator for personas)."""

    def __init__(self, config: TargetRunConfig, target: ChatEndpoint, simulator: UserSimulator | None) -> None:
        self.config = config
        self.target = target
        self.simulator = simulator

    def _opening(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []

    async def play(self, suite: Suite, case: SuiteCase) -> Transcript:
        started = time.perf_counter()
        history: list[dict[str, str]] = []
        turns: list[TurnLog] = []
        failure: str | None = None
        failure_by: Literal["target", "simulator"] | None = None
        sim_usage = Usage()
        region = case.region or suite.card.region
        planned = self._planned_turns(case)
        for number in range(1, planned + 1):
            source: Literal["suite", "simulator"] = "suite"
            if case.kind is CaseKind.PROMPT:
                user = case.prompt or ""
            elif case.kind is CaseKind.SCRIPT:
                user = case.user_turns[number - 1]
            elif number == 1 and case.opening:
                user = case.opening
            else:
                if self.simulator is None:
                    failure, failure_by = "simulator: no user simulator is configured for a persona case", "simulator"
                    break
                said = await self.simulator.next_message(case.persona or "", region, history, number, planned)
                sim_usage += said.usage
                if said.text is None:
                    failure, failure_by = f"simulator: {said.error}", "simulator"
                    break
                user, source = said.text, "simulator"
            history.append({"role": "user", "content": user})
            t0 = time.perf_counter()
            reply = await self.target.reply([*self._opening(), *history])
            log = TurnLog(turn=number, user=user, user_source=source, answer=reply.text, error=reply.error,
                          usage=reply.usage, cached=reply.cached, seconds=round(time.perf_counter() - t0, 4))
            turns.append(log)
            if reply.text is None:
                failure, failure_by = reply.error, "target"
                break
            history.append({"role": "assistant", "content": reply.text})
        return Transcript(
            key=case_key(suite, case), case_sha256=case_hash(case, self.config), suite=suite.key, case_id=case.id,
            kind=case.kind.value, expected=case.expected.value, category=case.category, region=region,
            target=self.config.target.model,
            system_prompt_sha256=sha256_json(self.config.system_prompt) if self.config.system_prompt else None,
            simulator=self.simulator.model if self.simulator is not None and case.kind is CaseKind.PERSONA else None,
            turns=turns, failure=failure, failure_by=failure_by, simulator_usage=sim_usage,
            seconds=round(time.perf_counter() - started, 4), created_at=datetime.now(UTC).isoformat(timespec="seconds"))

    @staticmethod
    def _planned_turns(case: SuiteCase) -> int:
        if case.kind is CaseKind.PROMPT:
            return 1
        if case.kind is CaseKind.SCRIPT:
            return len(case.user_turns)
        return case.turns or 1


async def play_all(todo: Sequence[tuple[Suite, SuiteCase]], player: Player, store: TranscriptStore,
                   concurrency: int, progress: Any) -> None:
    """Play the cases with a fixed pool of workers, appending each transcript as it finishes."""
    source = iter(todo)

    async def worker() -> None:
        for suite, case in source:
            store.append(await player.play(suite, case))
            progress.update(1)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))


# --- from transcripts to records ---------------------------------------------------------------------


def response_rows(transcripts: Sequence[Transcript]) -> Iterator[dict[str, Any]]:
    """One input row per answer: the conversation before it (as the target saw it, without the
    system prompt) and the answer, with the case's facts as columns for the report and the gate."""
    for item in transcripts:
        history: list[dict[str, str]] = []
        for turn in item.turns:
            history.append({"role": "user", "content": turn.user})
            if turn.answer is None:
                break
            answered = [*history, {"role": "assistant", "content": turn.answer}]
            yield {"id": item.record_id(turn.turn), "messages": answered,
                   "region": item.region, "model_id": item.target, "case": item.key, "suite": item.suite,
                   "kind": item.kind, "turn": turn.turn, "expected": item.expected, "category": item.category,
                   "prompt_safety": "unsafe" if item.expected in ("refuse", "redirect") else "safe"}
            history.append({"role": "assistant", "content": turn.answer})


def write_responses(path: Path, transcripts: Sequence[Transcript]) -> int:
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for row in response_rows(transcripts):
            count += 1
            yield json.dumps(row, ensure_ascii=False) + "\n"

    write_text_atomic(path, lines())
    return count


# --- refusals ----------------------------------------------------------------------------------------


class RefusalRow(Strict):
    record_id: str
    response_sha256: str
    reading: RefusalReading


def _read_refusals(path: Path) -> dict[str, RefusalRow]:
    rows: dict[str, RefusalRow] = {}
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = RefusalRow.model_validate_json(line)
                except ValueError:
                    continue  # an unreadable line: that answer is read again
                rows[row.record_id] = row
    return rows


async def read_refusals(items: Sequence[tuple[str, str | None, str]], path: Path, detector: RefusalDetector,
                        concurrency: int, retry_errors: bool) -> dict[str, RefusalRow]:
    """The refusal reading of every (record id, prompt, answer), appended as each is made; a reading
    already stored for the same answer text is kept (an error one is redone with retry_errors)."""
    cut_torn_tail(path)
    done = _read_refusals(path)
    todo = []
    for record_id, prompt, answer in items:
        prior = done.get(record_id)
        sha = sha256_json(answer)
        if prior is None or prior.response_sha256 != sha or (retry_errors and prior.reading.error is not None):
            todo.append((record_id, prompt, answer, sha))
    source = iter(todo)

    async def worker() -> None:
        for record_id, prompt, answer, sha in source:
            row = RefusalRow(record_id=record_id, response_sha256=sha, reading=await detector(prompt, answer))
            append_line(path, row.model_dump_json())
            done[record_id] = row

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    return done


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class TargetRunOutcome:
    out_dir: Path
    transcripts: list[Transcript]
    score_summary: dict[str, Any] | None
    refusals: dict[str, RefusalRow]
    report: ReleaseReport
    played_now: int
    target_calls: int
    target_cache_hits: int
    simulator_calls: int


def limited(cases: Sequence[SuiteCase], limit: int | None) -> list[SuiteCase]:
    """`limit` cases of a suite for a smoke run: single prompts first, then scripts, then personas;
    within each kind unsafe and safe cases in turn, each in file order. So even a small run measures
    both harm and over-refusal, on the cheapest cases."""
    if limit is None or limit >= len(cases):
        return list(cases)
    chosen: set[str] = set()
    for kind in CaseKind:
        queues = [[c for c in cases if c.kind is kind and c.is_unsafe == unsafe][::-1] for unsafe in (True, False)]
        while len(chosen) < limit and any(queues):
            for queue in queues:
                if queue and len(chosen) < limit:
                    chosen.add(queue.pop().id)
    return [case for case in cases if case.id in chosen]


def selected_cases(suites: Sequence[Suite], limit: int | None) -> list[tuple[Suite, SuiteCase]]:
    return [(suite, case) for suite in suites for case in limited(suite.cases, limit)]


def run_target(suites: Sequence[Suite], config: TargetRunConfig, rubrics: Sequence[Rubric], out_dir: Path,
               judge: JudgeConfig, plan: CascadeConfig, *, retry_errors: bool = False, progress: bool | None = None,
               judge_description: str | None = None) -> TargetRunOutcome:
    """Play, judge and read refusals into out_dir; a rerun resumes every step."""
    ensure_private_dir(out_dir)
    cases = selected_cases(suites, config.limit)
    store = TranscriptStore.open(out_dir / TRANSCRIPTS_FILE)
    todo = [(s, c) for s, c in cases if store.needs(case_key(s, c), case_hash(c, config), retry_errors)]
    target = ChatEndpoint(config.target, "target")
    simulator = UserSimulator(ChatEndpoint(config.simulator, "simulator")) if config.simulator is not None else None
    player = Player(config, target, simulator)
    bar = tqdm(total=len(todo), unit="case", desc="playing", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        if todo:
            asyncio.run(play_all(todo, player, store, config.concurrency, bar))
    finally:
        bar.close()
    transcripts = [store.done[case_key(s, c)] for s, c in cases]
    meta = {
        "target": config.target.model,
        "system_prompt_sha256": sha256_json(config.system_prompt) if config.system_prompt else None,
        "suites": [{"id": s.card.id, "version": s.card.version, "sha256": s.sha256, "cases": len(s.cases),
                    "played": sum(1 for x, _ in cases if x is s), "skipped_rows": len(s.skipped)} for s in suites],
        "rubrics": [r.key for r in rubrics], "judge": judge_description or judge.model,
        "samples": getattr(judge, "samples", 1),
        "config": config.model_dump(mode="json", exclude={"target": {"api_key"}, "simulator": {"api_key"}}),
    }
    write_text_atomic(out_dir / RUN_FILE, json.dumps(meta, indent=2) + "\n")

    answers = write_responses(out_dir / RESPONSES_FILE, transcripts)
    summary: dict[str, Any] | None = None
    if answers:
        summary = run_score(out_dir / RESPONSES_FILE, rubrics, out_dir, judge, retry_errors=retry_errors,
                            progress=progress, judge_description=judge_description, plan=plan).summary
    else:
        (out_dir / RESULTS_FILE).unlink(missing_ok=True)

    model = JudgeModel(judge) if plan.uses_llm and config.refusal_llm else None
    detector = RefusalDetector(model, threshold=config.refusal_threshold)
    items = [(t.record_id(turn.turn), turn.user, turn.answer) for t in transcripts for turn in t.answered
             if turn.answer is not None]
    refusals = asyncio.run(read_refusals(items, out_dir / REFUSALS_FILE, detector, judge.concurrency, retry_errors))
    report = build_release_report(out_dir, [t.model_dump(mode="json") for t in transcripts],
                                  {k: v.model_dump(mode="json") for k, v in refusals.items()}, meta)
    write_release(out_dir, report)
    return TargetRunOutcome(out_dir, transcripts, summary, refusals, report, len(todo), target.calls,
                            target.cache_hits, simulator.endpoint.calls if simulator is not None else 0)
