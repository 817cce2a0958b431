"""`psyjudge score --engine ray`: the same pure score_frame, per batch, on a pool of Ray actors.

The driver (this process) does what must be done once and in order, exactly as the local engine
does it: it reads and checks the input with judge.ingest (so a bad row is quarantined with its file
and line, never a crashed job), opens the id-keyed results store and leaves out every (record,
rubric) already judged. Only the records still to judge travel to the cluster, as Record JSON
(score_frame's RECORD_COLUMN), so that a worker judges exactly the record the driver hashed.

Each actor of the pool loads the cascade once (rules, classifier, LLM judge) and runs score_frame on
batch after batch. Every judge call first asks one limiter actor (judge.ratelimit), so the whole pool
keeps to --concurrency and --rps together. The driver appends each returned verdict to results.jsonl
as it arrives and writes each batch's rows (score_frame's columns) as a part file under <out>/parts/,
named <run start>-<n>, so that name order is the order written (a verdict rescored by a later run,
--retry-errors, is in a later part; results.jsonl stays the record of what holds). At the end it
writes the same summary.json and record_verdicts.jsonl as the local engine, so report, eval and gate
read a Ray run unchanged.

A worker that dies mid-batch loses nothing: Ray restarts the actor and runs the batch again
(max_restarts / max_task_retries), only whole returned batches reach the store, and the store is
keyed by (record, rubric), so a rerun of the command judges only what is missing.

Ray is imported here only, and this module only by the `score` command when --engine ray is asked for.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field
from tqdm import tqdm

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.cascade import Cascade, CascadeConfig
from judge.ingest import FORMATS, ColumnMap, IngestResult, InputError, Quarantined, read_records, write_quarantine
from judge.models import API_BASE_ENV, JudgeConfig, JudgeModel, load_litellm
from judge.ratelimit import SharedLimit
from judge.rubrics import RUBRIC_FILE, Rubric, RubricError, load_rubric_folder
from judge.runner import (
    QUARANTINE_FILE,
    RECORD_COLUMN,
    RESULTS_FILE,
    Key,
    ResultsStore,
    RunOutcome,
    build_cascade,
    finish_run,
    score_frame,
    summarise,
)
from judge.schema import Record, Strict, Verdict

PARTS_DIR = "parts"
LEASE_MARGIN_S = 30.0
"""How long past the request timeout a grant of the shared limit lives before it is reclaimed from a
worker that died holding it."""


class RayEngineError(Exception):
    """The cluster could not be reached, or the job failed; what finished is in the results store."""


class RayOptions(Strict):
    """Where and how wide a Ray run goes."""

    address: str | None = Field(default=None, description="A running cluster ('auto', 'ray://host:10001'); "
                                "None starts a Ray instance on this machine for the run.")
    workers: int = Field(default=2, ge=1, le=1024, description="Actors in the pool, each with its own cascade.")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0, description="GPUs Ray reserves for each actor.")
    batch_size: int = Field(default=64, ge=1, description="Records per batch handed to an actor: larger batches spread "
                            "each batch's fixed cost (a new event loop, the round trip to the driver) thinner; a "
                            "worker that dies redoes at most one.")
    rps: float | None = Field(default=None, gt=0, description="Judge requests per second across the pool.")
    parts_format: Literal["parquet", "jsonl"] = "parquet"


# --- input ---------------------------------------------------------------------------------------


def _part_files(folder: Path, fmt: str | None) -> list[Path]:
    """The data files of a partitioned input, in name order; bookkeeping files (_SUCCESS, .crc) skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(p.startswith((".", "_")) for p in path.relative_to(folder).parts):
            continue
        if fmt is not None or path.suffix.lower() in FORMATS:
            found.append(path)
    if not found:
        raise InputError(folder, f"no input files in the folder (expected {', '.join(FORMATS)})")
    return found


def read_input(path: Path, columns: ColumnMap | None = None, fmt: str | None = None) -> IngestResult:
    """An input file, or a folder of part files read as one log: each part through judge.ingest (a bad
    row is quarantined with its part and line), and an id repeated across parts dropped when the
    content is the same, quarantined when it differs, as within one file."""
    if not Path(path).is_dir():
        return read_records(path, columns, fmt)
    merged = IngestResult([], [], 0, 0)
    first: dict[str, tuple[str, int | None, str]] = {}  # id -> (part, line, content hash)
    for part in _part_files(Path(path), fmt):
        got = read_records(part, columns, fmt)
        merged.rows_read += got.rows_read
        merged.duplicates_identical += got.duplicates_identical
        merged.quarantined += got.quarantined
        for record in got.records:
            digest = record.content_hash()
            seen = first.get(record.id)
            if seen is None:
                first[record.id] = (str(part), record.source_line, digest)
                merged.records.append(record)
            elif seen[2] == digest:
                merged.duplicates_identical += 1
            else:
                merged.quarantined.append(Quarantined(
                    source=str(part), line=record.source_line or 0, raw=record.model_dump_json(),
                    reason=f"duplicate id {record.id!r} with different content (first seen in {seen[0]} "
                           f"on line {seen[1]})"))
    return merged


# --- rubrics travel as files ---------------------------------------------------------------------


@dataclass(frozen=True)
class RubricBundle:
    """A rubric's files, so that a worker on another machine loads the very rubric the driver loaded
    (a Rubric holds a Jinja environment and cannot be pickled). The shared partials of the installed
    package are not shipped: the worker's own must match, which the fingerprint check enforces."""

    key: str
    sha256: str
    folder: str
    files: dict[str, bytes] = field(repr=False)

    @classmethod
    def of(cls, rubric: Rubric) -> RubricBundle:
        from judge.rubrics import builtin_rubrics_dir

        folder = rubric.folder
        files = {f"{folder.name}/{p.relative_to(folder)}": p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}
        shared = folder.parent / "_shared"
        if shared.is_dir() and shared.resolve() != (builtin_rubrics_dir() / "_shared").resolve():
            files.update({f"_shared/{p.name}": p.read_bytes() for p in sorted(shared.glob("*")) if p.is_file()})
        return cls(rubric.key, rubric.sha256, str(folder), files)

    def load(self) -> Rubric:
        """The rubric from its own folder when this machine has it unchanged, else from the shipped files."""
        with contextlib.suppress(RubricError, OSError):
            if (Path(self.folder) / RUBRIC_FILE).is_file():
                here = load_rubric_folder(Path(self.folder))
                if here.sha256 == self.sha256:
                    return here
        root = Path(tempfile.mkdtemp(prefix="psyjudge-rubric-"))
        # Templates are read from the folder as they are used: it stays until this process exits.
        atexit.register(shutil.rmtree, root, True)
        for name, data in self.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        rubric = load_rubric_folder(root / Path(self.folder).name)
        if rubric.sha256 != self.sha256:
            raise RubricError(self.folder, "fingerprint", f"{self.key} loads differently on this worker (its "
                              "installed psyjudge has other shared partials); install the driver's version")
        return rubric


# --- the actors ----------------------------------------------------------------------------------


class ScoreWorker:
    """One actor of the pool: the cascade is loaded once, in __init__, then score_frame runs on each
    batch. Subclass it (run_score_ray's `worker`) to instrument a run."""

    def __init__(self, config: JudgeConfig, plan: CascadeConfig, rubrics: Sequence[RubricBundle],
                 limiter: str | None, threads: int) -> None:
        from judge.classifier.backends import THREADS_ENV

        # torch would take every core of the node; this actor has `threads` of them.
        os.environ.setdefault(THREADS_ENV, str(max(1, threads)))
        self.rubrics = [bundle.load() for bundle in rubrics]
        self.cascade: Cascade
        self.model: JudgeModel
        self.cascade, self.model = build_cascade(config, plan)
        self.concurrency = config.concurrency
        if limiter is not None:
            import ray

            from judge.ratelimit import ActorLimiter

            self.model.limiter = ActorLimiter(ray.get_actor(limiter))
        if plan.uses_llm:
            load_litellm()  # seconds to import: paid once here, not inside the first batch

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        by_key = {rubric.key: rubric for rubric in self.rubrics}
        frames: list[pd.DataFrame] = []
        for keys, rows in batch.groupby(RUBRICS_COLUMN, sort=False):  # one group, unless Ray joined blocks
            frames.append(score_frame(rows, [by_key[k] for k in json.loads(str(keys))], self.cascade,
                                      self.concurrency))
        return pd.concat(frames, ignore_index=True)


class LimiterActor:
    """The run's one SharedLimit, served to every worker; judge.ray_engine makes it a named Ray actor
    (async methods: Ray runs them on one event loop, which is what SharedLimit needs)."""

    def __init__(self, concurrency: int, rps: float | None, lease_s: float) -> None:
        self.limit = SharedLimit(concurrency, rps, lease_s=lease_s)

    async def acquire(self, ticket: str) -> bool:
        return await self.limit.acquire(ticket)

    async def release(self, ticket: str) -> None:
        await self.limit.release(ticket)

    async def abandon(self, ticket: str) -> None:
        await self.limit.abandon(ticket)

    async def snapshot(self) -> dict[str, Any]:
        return self.limit.snapshot()


def _start_limiter(ray: Any, name: str, config: JudgeConfig, rps: float | None) -> Any:
    """The limiter actor, named so that every worker finds it, living as long as this driver's job.
    No restarts: a limiter restarted empty would forget the calls in flight and let the pool exceed
    the limit; losing it instead fails those calls as judge errors (rescored by --retry-errors)."""
    remote = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=100_000)(LimiterActor)
    return remote.options(name=name).remote(config.concurrency, rps, config.timeout_s + LEASE_MARGIN_S)


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """Ray, connected: to `address`, or a Ray instance started on this machine. An instance this
    process already joined is used as it is, and left running."""
    try:
        import ray
    except ImportError as exc:
        raise RayEngineError("--engine ray needs Ray: pip install 'psyjudge[ray]'") from exc
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayEngineError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# --- the run -------------------------------------------------------------------------------------


def _write_part(folder: Path, name: str, frame: pd.DataFrame, fmt: str) -> None:
    """One batch's rows, written whole under a temporary name and renamed (a reader never sees half)."""
    target = folder / f"{name}.{fmt}"
    if fmt == "jsonl":
        write_text_atomic(target, frame.to_json(orient="records", lines=True, force_ascii=False))
        return
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUBRICS_COLUMN = "__psyjudge_rubrics__"
"""The rubric keys (JSON list) a row still needs: all of them unless an earlier run stopped between a
record's rubrics."""


def _batches(todo: Sequence[tuple[Record, Rubric]], size: int) -> list[pd.DataFrame]:
    """The records to judge as input blocks of at most `size` rows, each block's records needing the
    same rubrics (score_frame judges a frame under one list of rubrics)."""
    needs: dict[str, tuple[Record, list[str]]] = {}
    for record, rubric in todo:
        needs.setdefault(record.id, (record, []))[1].append(rubric.key)
    groups: dict[str, list[Record]] = {}
    for record, keys in needs.values():
        groups.setdefault(json.dumps(keys), []).append(record)
    chunks = [(keys, records[i:i + size]) for keys, records in groups.items() for i in range(0, len(records), size)]
    return [pd.DataFrame({"record_id": [r.id for r in chunk], RECORD_COLUMN: [r.model_dump_json() for r in chunk],
                          RUBRICS_COLUMN: keys}) for keys, chunk in chunks]


def run_score_ray(
    input_path: Path,
    rubrics: Sequence[Rubric],
    out_dir: Path,
    judge: JudgeConfig,
    options: RayOptions | None = None,
    *,
    columns: ColumnMap | None = None,
    input_format: str | None = None,
    retry_errors: bool = False,
    progress: bool | None = None,
    judge_description: str | None = None,
    plan: CascadeConfig | None = None,
    worker: type[ScoreWorker] = ScoreWorker,
) -> RunOutcome:
    """judge.runner.run_score on a Ray cluster: the same files in out_dir (results.jsonl,
    quarantine.jsonl, summary.json, record_verdicts.jsonl) plus each batch's rows under parts/.
    `input_path` may be a folder of part files. Raises InputError when the input cannot be read and
    RayEngineError when the cluster cannot be reached or the job fails."""
    options = options or RayOptions()
    plan = plan or CascadeConfig()
    if judge.api_base is None and os.environ.get(API_BASE_ENV):
        # Read here: a worker on another machine does not have this process's environment.
        judge = judge.model_copy(update={"api_base": os.environ[API_BASE_ENV]})
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    ingested = read_input(input_path, columns, input_format)
    ensure_private_dir(out_dir)
    write_quarantine(out_dir / QUARANTINE_FILE, ingested.quarantined)
    store = ResultsStore.open(out_dir / RESULTS_FILE)
    pairs = [(r, rb) for r in ingested.records for rb in rubrics]
    todo = [(r, rb) for r, rb in pairs if store.needs(r, rb, retry_errors)]
    limit: dict[str, Any] | None = None
    cache_hits = 0
    parts = 0
    if todo:
        limit, cache_hits, parts = _execute(todo, store, out_dir, judge, options, plan, progress, worker)
    wall = time.perf_counter() - t0
    summary = summarise(store, [(r.id, rb.key) for r, rb in pairs], {
        "input": str(input_path),
        "judge": judge.model,
        "judge_description": judge_description or judge.model,
        "cascade": plan.model_dump(mode="json"),
        "api_base": judge.api_base,
        "rubrics": [{"id": rb.id, "version": rb.version, "sha256": rb.sha256} for rb in rubrics],
        "rows_read": ingested.rows_read,
        "records": len(ingested.records),
        "quarantined": len(ingested.quarantined),
        "quarantine_reasons": dict(Counter(q.reason.split(":")[0] for q in ingested.quarantined)),
        "duplicates_identical": ingested.duplicates_identical,
        "this_run": {
            "engine": "ray",
            "scored": len(todo),
            "skipped_already_done": len(pairs) - len(todo),
            # The limiter counts every request let through, retries and calls of a batch that died
            # included; without the LLM tier nothing is called.
            "model_calls": limit["granted"] if limit else (None if todo and plan.uses_llm else 0),
            "cache_hits": cache_hits,
            "workers": options.workers,
            "failed_workers": None,  # Ray restarts a dead actor and reruns its batch; none is left failed
            "repaired_torn_bytes": store.repaired_bytes,
            "unreadable_result_lines": store.unreadable_lines,
            "wall_s": round(wall, 3),
            "records_per_s": round(len(todo) / wall, 2) if todo and wall > 0 else None,
            "started_at": started_at,
            "ray": {**options.model_dump(mode="json"), "parts_written": parts,
                    "parts_dir": str(out_dir / PARTS_DIR), "rate_limit": limit},
        },
    }, mode=plan.mode, tiers=list(plan.tiers), samples=judge.samples, review_below=judge.review_below)
    return finish_run(out_dir, store, [r.id for r in ingested.records], rubrics, summary)


def _execute(todo: Sequence[tuple[Record, Rubric]], store: ResultsStore, out_dir: Path, judge: JudgeConfig,
             options: RayOptions, plan: CascadeConfig, progress: bool | None,
             worker: type[ScoreWorker]) -> tuple[dict[str, Any] | None, int, int]:
    """Judge `todo` on the pool, appending verdicts to the store as batches return. Returns the
    limiter's statistics, the cache hits and the number of part files written."""
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    parts_dir = ensure_private_dir(out_dir / PARTS_DIR)
    bar = tqdm(total=len(todo), unit="rec", desc="scoring (ray)", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    limit: dict[str, Any] | None = None
    cache_hits = parts = 0
    rubrics = list({rb.key: rb for _, rb in todo}.values())
    wanted = {(r.id, rb.key): r.content_hash() for r, rb in todo}
    with connected(options.address) as ray, bar:
        import ray.data

        context = ray.data.DataContext.get_current()
        shown = context.enable_progress_bars, context.print_on_execution_start
        context.enable_progress_bars = context.print_on_execution_start = False  # the run's own bar counts
        limiter = None
        try:
            if plan.uses_llm:
                limiter = _start_limiter(ray, f"psyjudge-limit-{run_id}", judge, options.rps)
            blocks = _batches(todo, options.batch_size)
            scored = ray.data.from_pandas(blocks).map_batches(
                worker, batch_format="pandas", batch_size=options.batch_size,
                compute=ray.data.ActorPoolStrategy(size=min(options.workers, len(blocks))),
                fn_constructor_kwargs={"config": judge, "plan": plan,
                                       "rubrics": [RubricBundle.of(rb) for rb in rubrics],
                                       "limiter": f"psyjudge-limit-{run_id}" if limiter is not None else None,
                                       "threads": int(options.cpus_per_worker)},
                # The pool's actors get Ray Data's defaults max_restarts=-1 and max_task_retries=-1
                # (passing them here is deprecated): a dead actor is restarted and its batch run again.
                num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None)
            for batch in scored.iter_batches(batch_format="pandas", batch_size=None):
                cache_hits += _store_batch(batch, wanted, store)
                bar.update(len(batch))
                _write_part(parts_dir, f"{run_id}-{parts:05d}", batch, options.parts_format)
                parts += 1
        except Exception as exc:
            if isinstance(exc, (RubricError, InputError)):
                raise
            raise RayEngineError(f"the Ray job failed: {type(exc).__name__}: {str(exc)[:500]}; the verdicts "
                                 f"of the batches that finished are stored, and a rerun resumes") from exc
        finally:
            context.enable_progress_bars, context.print_on_execution_start = shown
            if limiter is not None:
                with contextlib.suppress(Exception):
                    limit = ray.get(limiter.snapshot.remote(), timeout=30)
                with contextlib.suppress(Exception):
                    ray.kill(limiter)
    return limit, cache_hits, parts


def _store_batch(batch: pd.DataFrame, wanted: dict[Key, str], store: ResultsStore) -> int:
    """Append a returned batch's verdicts; the cache hits among them. A verdict for a record other
    than the one sent (its content hash differs) would be a fault in the transport: it stops the run."""
    hits = 0
    for text in batch["verdict_json"]:
        verdict = Verdict.model_validate_json(text)
        key = (verdict.record_id, verdict.rubric)
        if wanted.get(key) != verdict.record_sha256:
            raise RuntimeError(f"a worker returned a verdict for {key} that this run did not send")
        store.append(verdict)
        hits += verdict.usage.cached_calls
    return hits
