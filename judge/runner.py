"""Batch execution: ingest, judge concurrently, store each verdict as it arrives, resume, summarise.

results.jsonl is append-only: one Verdict per line, written with a single O_APPEND write as soon
as the verdict exists, so a SIGKILL loses nothing that finished. A rerun reads it back, repairs a
torn last line if a kill landed mid-write, and skips every (record, rubric) already judged. A later
line for the same key supersedes an earlier one (that is how a retried ERROR is replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from judge.atomic import append_line, cut_torn_tail, ensure_private_dir, write_text_atomic
from judge.cascade import Cascade, CascadeConfig, combine_verdicts
from judge.datasets import LabelledRow
from judge.ingest import ColumnMap, IngestResult, read_records, records_from_frame, write_quarantine
from judge.ledger import SampleVote, TierSpend, spends_of, summarise_agreement, summarise_ledgers, vote_of
from judge.models import DEFAULT_REVIEW_BELOW, JudgeConfig, JudgeModel
from judge.rubrics import Rubric, example_records
from judge.schema import ERROR, Record, Verdict
from judge.tiers.base import Tier
from judge.tiers.llm import LLMTier
from judge.tiers.rules import RulesTier
from judge.workers import auto_workers, run_sharded

RESULTS_FILE = "results.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
SUMMARY_FILE = "summary.json"
RECORD_VERDICTS_FILE = "record_verdicts.jsonl"
"""With several rubrics: one combined verdict per record (most severe applicable label), each
rubric's verdict inside. Rewritten from results.jsonl at the end of every run."""

Key = tuple[str, str]  # (record id, rubric id@version)


@dataclass
class _Done:
    """What the store remembers of a finished verdict: enough to resume and to summarise, and no
    more (a full verdict line carries the prompts; a million of them would not fit in memory)."""

    label: str
    rubric: str
    record_sha256: str
    rubric_sha256: str
    decided_by: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_known: bool
    offset: int
    """Where the verdict's line starts in results.jsonl, to read it back without holding it."""
    degraded: bool = False
    spends: tuple[TierSpend, ...] = ()
    vote: SampleVote | None = None
    """The agreement of a sampled verdict (rate, review flag); None when the judge was asked once."""

    @classmethod
    def from_row(cls, row: dict[str, Any], offset: int) -> _Done:
        usage = row.get("usage") or {}
        return cls(row["label"], row["rubric"], row["record_sha256"], row["rubric_sha256"],
                   row.get("decided_by"), row.get("error"), int(usage.get("input_tokens", 0)),
                   int(usage.get("output_tokens", 0)), float(usage.get("cost_usd", 0.0)),
                   bool(usage.get("cost_known", True)), offset, bool(row.get("degraded", False)), spends_of(row),
                   vote_of(row))


@dataclass
class ResultsStore:
    """The append-only verdict file and what it already holds."""

    path: Path
    done: dict[Key, _Done] = field(default_factory=dict)
    repaired_bytes: int = 0
    unreadable_lines: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> ResultsStore:
        store = cls(path)
        if path.exists():
            store._repair_tail()
            store._load()
        return store

    def _repair_tail(self) -> None:
        self.repaired_bytes = cut_torn_tail(self.path)

    def _load(self) -> None:
        offset = 0
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    row = json.loads(line)
                    self.done[(row["record_id"], row["rubric"])] = _Done.from_row(row, offset)
                except (ValueError, KeyError, TypeError):
                    self.unreadable_lines.append(number)
                offset += len(line)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[Key], Verdict]]:
        """Read stored verdicts back from their lines, through one open handle."""
        with open(self.path, "rb") as handle:
            def read(key: Key) -> Verdict:
                handle.seek(self.done[key].offset)
                return Verdict.model_validate_json(handle.readline())

            yield read

    def needs(self, record: Record, rubric: Rubric, retry_errors: bool) -> bool:
        prior = self.done.get((record.id, rubric.key))
        if prior is None:
            return True
        if prior.record_sha256 != record.content_hash() or prior.rubric_sha256 != rubric.sha256:
            return True  # the input row or the rubric's text changed under the same id and version
        # A degraded verdict (a cheaper tier's fallback while the judge failed) is retried like an error.
        return (prior.label == ERROR or prior.degraded) and retry_errors

    def append(self, verdict: Verdict) -> None:
        offset = append_line(self.path, verdict.model_dump_json())
        u = verdict.usage
        self.done[(verdict.record_id, verdict.rubric)] = _Done(
            verdict.label_name, verdict.rubric, verdict.record_sha256, verdict.rubric_sha256,
            verdict.decided_by, verdict.error, u.input_tokens, u.output_tokens, u.cost_usd, u.cost_known,
            offset, verdict.degraded, spends_of({"ledger": [e.model_dump() for e in verdict.ledger]}),
            vote_of({"agreement": verdict.agreement.model_dump() if verdict.agreement else None}))


def read_verdicts(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The verdict rows of a run folder, latest per (record, rubric), in file order."""
    latest: dict[Key, dict[str, Any]] = {}
    with open(out_dir / RESULTS_FILE, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError, KeyError):
                row = json.loads(line)
                latest[(row["record_id"], row["rubric"])] = row
    yield from latest.values()


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


async def judge_stream(
    pairs: Iterable[tuple[Record, Rubric]], cascade: Cascade, concurrency: int
) -> AsyncIterator[Verdict]:
    """Judge (record, rubric) pairs with a fixed pool of workers; yield verdicts as they finish.
    A fixed pool, rather than a task per record, keeps memory flat for a million-row log."""
    queue: asyncio.Queue[Verdict | None] = asyncio.Queue()
    source = iter(pairs)

    async def worker() -> None:
        try:
            for record, rubric in source:  # iterators are shared safely: workers interleave at awaits
                await queue.put(await cascade.judge(record, rubric))
        finally:
            await queue.put(None)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    finished = 0
    try:
        while finished < len(workers):
            item = await queue.get()
            if item is None:
                finished += 1
            else:
                yield item
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def judge_all(pairs: Sequence[tuple[Record, Rubric]], cascade: Cascade,
              concurrency: int) -> dict[Key, Verdict]:
    """Judge every pair in a fresh event loop; verdicts keyed by (record id, rubric id@version)."""
    if not pairs:
        return {}

    async def collect() -> list[Verdict]:
        return [v async for v in judge_stream(pairs, cascade, concurrency)]

    return {(v.record_id, v.rubric): v for v in asyncio.run(collect())}


def build_cascade(config: JudgeConfig, plan: CascadeConfig | None = None) -> tuple[Cascade, JudgeModel]:
    """The cascade a run uses: the rules tier, then the LLM judge by default; the classifier between
    them when the plan names it."""
    plan = plan or CascadeConfig()
    model = JudgeModel(config)
    tiers: list[Tier] = []
    for name in plan.tiers:
        if name == "rules":
            tiers.append(RulesTier(programs=plan.programs))
        elif name == "classifier":
            # Imported here: torch and the model load only when the tier is asked for.
            from judge.tiers.classifier import ClassifierTier

            tiers.append(ClassifierTier(plan.classifier_model, plan.classifier_runtime))
        else:
            tiers.append(LLMTier(model))
    return Cascade(tiers, plan.effective_thresholds(), mode=plan.run_mode, strict=plan.strict), model


# --- the pure core ------------------------------------------------------------------------------

FRAME_COLUMNS = ["record_id", "rubric", "label", "record_label", "applicable", "decided_by", "confidence",
                 "agreement", "review", "fired_rule", "degraded", "error", "cost_usd", "input_tokens", "output_tokens",
                 "latency_s", "verdict_json"]
"""`agreement` and `review`: the sampled judge's agreement rate and review flag (None when not sampled)."""


def verdict_row(verdict: Verdict) -> dict[str, Any]:
    decided = next((t for t in verdict.tiers if t.tier == verdict.decided_by), None)
    return {
        "record_id": verdict.record_id, "rubric": verdict.rubric,
        "label": verdict.label_name,
        "applicable": verdict.applicable,
        "decided_by": verdict.decided_by,
        "confidence": decided.confidence if decided else None,
        "agreement": verdict.agreement.rate if verdict.agreement else None,
        "review": verdict.agreement.review if verdict.agreement else None,
        "fired_rule": (decided.fallback_rule if verdict.degraded else decided.fired_rule) if decided else None,
        "degraded": verdict.degraded,
        "error": verdict.error, "cost_usd": verdict.usage.cost_usd,
        "input_tokens": verdict.usage.input_tokens, "output_tokens": verdict.usage.output_tokens,
        "latency_s": verdict.latency_s, "verdict_json": verdict.model_dump_json(),
    }


RECORD_COLUMN = "__psyjudge_record__"
"""A frame column of Record JSON: rows that a driver has already read and checked (judge.ray_engine),
judged as they are. Re-reading them from input columns could change them (a frame pads every row to
the same columns and turns integers with gaps into floats), and with them their content hash."""


def score_frame(frame: pd.DataFrame, rubrics: Sequence[Rubric], cascade: Cascade,
                concurrency: int = 8, columns: ColumnMap | None = None) -> pd.DataFrame:
    """Judge every row of `frame` under every rubric: one output row per (record, rubric), with
    `record_label` the record's label across all the rubrics (the most severe that applies).

    The frame has the columns of an input file (id, messages or prompt/response, region, ...), or a
    RECORD_COLUMN of records already read. No files, no global state: the same call runs per
    partition on Ray Data or Dask. A row that cannot be read is not dropped: it comes back with no
    label and the quarantine reason."""
    if RECORD_COLUMN in frame.columns:
        ingested = IngestResult([Record.model_validate_json(text) for text in frame[RECORD_COLUMN]], [],
                                len(frame), 0)
    else:
        ingested = records_from_frame(frame, columns)
    pairs = [(record, rubric) for record in ingested.records for rubric in rubrics]

    verdicts = judge_all(pairs, cascade, concurrency)
    combined = {record.id: combine_verdicts([verdicts[(record.id, rb.key)] for rb in rubrics]).label_name
                for record in ingested.records}
    out = [{**verdict_row(verdicts[(record.id, rubric.key)]), "record_label": combined[record.id]}
           for record, rubric in pairs]
    out += [{"record_id": None, "rubric": rubric.key, "label": None,
             "error": f"quarantined (row {q.line}): {q.reason}"}
            for q in ingested.quarantined for rubric in rubrics]
    return pd.DataFrame(out, columns=FRAME_COLUMNS)


# --- the batch job ------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    out_dir: Path
    summary: dict[str, Any]


def record_verdicts(store: ResultsStore, record_ids: Sequence[str], rubrics: Sequence[Rubric]) -> Iterator[Verdict]:
    """The combined verdict of every record whose rubrics are all judged, one at a time."""
    with store.reader() as read:
        for record_id in record_ids:
            keys = [(record_id, rb.key) for rb in rubrics]
            if all(k in store.done for k in keys):
                yield combine_verdicts([read(k) for k in keys])


def summarise(store: ResultsStore, keys: Sequence[Key], extra: dict[str, Any], *, mode: str = "cascade",
              tiers: Sequence[str] = (), samples: int = 1,
              review_below: float = DEFAULT_REVIEW_BELOW) -> dict[str, Any]:
    """Counts over every (record, rubric) of this input, finished now or in an earlier run, and the
    cascade's ledger summed (judge.ledger): decision share per tier, LLM calls avoided, cost per 1,000
    records against LLM-only; and the agreement of the sampled verdicts (`samples` and `review_below`
    are the run's settings; each verdict's review flag is the one it was judged with)."""
    by_label: Counter[str] = Counter()
    by_tier: Counter[str] = Counter()
    by_rubric: dict[str, Counter[str]] = {}
    errors: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    tokens_in = tokens_out = 0
    cost = 0.0
    cost_known = True
    for key in keys:
        done = store.done.get(key)
        if done is None:
            by_label["NOT_SCORED"] += 1
            continue
        by_label[done.label] += 1
        by_tier[done.decided_by or "none"] += 1
        by_rubric.setdefault(done.rubric, Counter())[done.label] += 1
        if done.label == ERROR:
            errors[(done.error or "unknown")[:160]] += 1
        if done.degraded:
            degraded[(done.error or "no tier gave a label")[:160]] += 1
        tokens_in += done.input_tokens
        tokens_out += done.output_tokens
        cost += done.cost_usd
        cost_known = cost_known and done.cost_known
    finished = [(k[0], store.done[k].spends) for k in keys if k in store.done]
    if not tiers:  # a cascade handed in by the caller: its tiers as its verdicts' ledgers list them
        tiers = list(dict.fromkeys(s.tier for _, spends in finished for s in spends))
    ledger = summarise_ledgers(finished, mode=mode, tiers=tiers)
    agreement = summarise_agreement((store.done[k].vote for k in keys if k in store.done), samples=samples,
                                    review_below=review_below)
    return {
        "verdicts": len(keys),
        "by_label": dict(by_label),
        "by_deciding_tier": dict(by_tier),
        "by_rubric": {k: dict(v) for k, v in by_rubric.items()},
        "errors": sum(errors.values()),
        "error_reasons": dict(errors.most_common(20)),
        "degraded": sum(degraded.values()),
        "degraded_reasons": dict(degraded.most_common(20)),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": round(cost, 6),
        "cost_complete": cost_known,
        "ledger": ledger.model_dump(mode="json"),
        "agreement": agreement.model_dump(mode="json"),
        **extra,
    }


def run_score(
    input_path: Path,
    rubrics: Sequence[Rubric],
    out_dir: Path,
    judge: JudgeConfig,
    *,
    columns: ColumnMap | None = None,
    input_format: str | None = None,
    retry_errors: bool = False,
    progress: bool | None = None,
    cascade: Cascade | None = None,
    workers: int | None = None,
    judge_description: str | None = None,
    plan: CascadeConfig | None = None,
) -> RunOutcome:
    """Score a chat log into out_dir (results.jsonl, quarantine.jsonl, summary.json). Raises
    judge.ingest.InputError when the input cannot be read at all; bad rows are quarantined.
    `workers` processes share the run (default: judge/workers.auto_workers)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    ingested = read_records(input_path, columns, input_format)
    ensure_private_dir(out_dir)
    write_quarantine(out_dir / QUARANTINE_FILE, ingested.quarantined)

    store = ResultsStore.open(out_dir / RESULTS_FILE)
    pairs = [(r, rb) for r in ingested.records for rb in rubrics]
    todo = [(r, rb) for r, rb in pairs if store.needs(r, rb, retry_errors)]
    used_plan = None if cascade is not None else (plan or CascadeConfig())
    # A cascade handed in by the caller cannot be rebuilt in a worker process: it runs here. Without
    # the LLM there is nothing to wait on: the rules tier runs at CPU speed in one process.
    if cascade is not None or (used_plan is not None and not used_plan.uses_llm):
        workers = 1
    else:
        workers = min(workers or auto_workers(judge.concurrency), max(1, len(todo)))
    calls: int | None = None
    hits: int | None = None
    failed_workers = 0
    # disable=None lets tqdm decide: a bar on a terminal, nothing in a CI log.
    bar = tqdm(total=len(todo), unit="rec", desc="scoring", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        if todo and workers > 1:
            stats = run_sharded(todo, judge, store.path, workers, bar.update, plan)
            repaired = store.repaired_bytes
            store = ResultsStore.open(store.path)  # read back what the workers appended
            store.repaired_bytes = repaired
            calls, hits, failed_workers = stats.calls, stats.cache_hits, stats.failed_workers
        elif todo:
            model: JudgeModel | None = None
            if cascade is None:
                cascade, model = build_cascade(judge, plan)
            run_cascade = cascade

            async def execute() -> None:
                async for verdict in judge_stream(todo, run_cascade, judge.concurrency):
                    store.append(verdict)
                    bar.update(1)

            asyncio.run(execute())
            if model is not None:
                calls, hits = model.calls, model.cache_hits
        else:
            calls, hits = 0, 0
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    quarantine_reasons = Counter(q.reason.split(":")[0] for q in ingested.quarantined)
    summary = summarise(store, [(r.id, rb.key) for r, rb in pairs], {
        "input": str(input_path),
        "judge": judge.model,
        "judge_description": judge_description or judge.model,
        "cascade": used_plan.model_dump(mode="json") if used_plan is not None else "given by the caller",
        "api_base": judge.api_base,
        "rubrics": [{"id": rb.id, "version": rb.version, "sha256": rb.sha256} for rb in rubrics],
        "rows_read": ingested.rows_read,
        "records": len(ingested.records),
        "quarantined": len(ingested.quarantined),
        "quarantine_reasons": dict(quarantine_reasons),
        "duplicates_identical": ingested.duplicates_identical,
        "this_run": {
            "scored": len(todo),
            "skipped_already_done": len(pairs) - len(todo),
            "model_calls": calls,
            "cache_hits": hits,
            "workers": workers,
            "failed_workers": failed_workers,
            "repaired_torn_bytes": store.repaired_bytes,
            "unreadable_result_lines": store.unreadable_lines,
            "wall_s": round(wall, 3),
            "records_per_s": round(len(todo) / wall, 2) if todo and wall > 0 else None,
            "started_at": started_at,
        },
    }, mode=used_plan.mode if used_plan is not None else (cascade.mode if cascade is not None else "cascade"),
        tiers=list(used_plan.tiers) if used_plan is not None else
        ([t.name for t in cascade.tiers] if cascade is not None else []),
        samples=judge.samples, review_below=judge.review_below)
    return finish_run(out_dir, store, [r.id for r in ingested.records], rubrics, summary)


def finish_run(out_dir: Path, store: ResultsStore, record_ids: Sequence[str], rubrics: Sequence[Rubric],
               summary: dict[str, Any]) -> RunOutcome:
    """The end of a scoring run, whichever engine ran it: the combined per-record verdicts when there
    are several rubrics, then summary.json."""
    if len(rubrics) > 1:
        by_record: Counter[str] = Counter()

        def lines() -> Iterator[str]:
            for verdict in record_verdicts(store, record_ids, rubrics):
                by_record[verdict.label_name] += 1
                yield verdict.model_dump_json() + "\n"

        write_text_atomic(out_dir / RECORD_VERDICTS_FILE, lines())
        summary["by_record"] = dict(by_record)
    else:
        # One rubric: results.jsonl is per record; a combined file left by an earlier run is stale.
        (out_dir / RECORD_VERDICTS_FILE).unlink(missing_ok=True)
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return RunOutcome(out_dir, summary)


def judge_labelled(rubric: Rubric, rows: Sequence[LabelledRow], cascade: Cascade,
                   concurrency: int = 4) -> list[tuple[LabelledRow, Verdict]]:
    """Judge labelled rows with a real cascade, each beside its verdict, in the rows' order."""
    verdicts = judge_all([(row.record(), rubric) for row in rows], cascade, concurrency)
    return [(row, verdicts[(row.id, rubric.key)]) for row in rows]


def judge_examples(rubric: Rubric, cascade: Cascade, concurrency: int = 4) -> list[tuple[str, str, Verdict]]:
    """Judge the rubric's own examples with a real cascade: (example id, expected, verdict)."""
    verdicts = judge_all([(r, rubric) for r in example_records(rubric)], cascade, concurrency)
    return [(ex.id, ex.expected.value, verdicts[(f"{rubric.id}:{ex.id}", rubric.key)])
            for ex in rubric.spec.examples]
