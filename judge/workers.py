"""One run across several processes, each with its own event loop.

One asyncio loop spends about 8 ms of CPU per judge call (most of it inside litellm and the openai
client), so with many calls in flight a single loop, not the provider, sets the pace (see
bench/results/throughput.md: 91% of the ideal rate at 8 in flight, about half at 32). Past 8 calls
in flight, run_score forks worker processes (up to twice the cores, as the loops spend much of
their time waiting on the network):
each judges an interleaved shard of the records with its share of the concurrency limit (so the
per-provider limit still holds across the run) and appends to the same results.jsonl. Appends are
single O_APPEND writes of whole lines, which the kernel does not interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from judge.cascade import CascadeConfig
from judge.models import JudgeConfig, load_litellm
from judge.procs import die_with_parent, usable_cores
from judge.rubrics import Rubric
from judge.schema import Record

CALLS_PER_LOOP = 8  # in-flight calls one event loop keeps up with (measured, bench/throughput.py)


def auto_workers(concurrency: int) -> int:
    return max(1, min(2 * usable_cores(), concurrency // CALLS_PER_LOOP))


@dataclass
class ShardStats:
    calls: int = 0
    cache_hits: int = 0
    failed_workers: int = 0


def _shard(pairs: Sequence[tuple[Record, Rubric]], config: JudgeConfig, plan: CascadeConfig | None, results: Path,
           events: Queue[tuple[str, int, int]], workers: int = 1) -> None:
    from judge.classifier.backends import share_threads
    from judge.runner import ResultsStore, build_cascade, judge_stream

    die_with_parent()
    share_threads(workers)
    cascade, model = build_cascade(config, plan)
    store = ResultsStore(results)  # append only: the parent already decided what to judge

    async def run() -> None:
        async for verdict in judge_stream(pairs, cascade, config.concurrency):
            store.append(verdict)
            events.put(("done", 1, 0))

    asyncio.run(run())
    events.put(("stats", model.calls, model.cache_hits))


def run_sharded(pairs: Sequence[tuple[Record, Rubric]], config: JudgeConfig, results: Path, workers: int,
                on_done: Callable[[int], Any], plan: CascadeConfig | None = None) -> ShardStats:
    """Judge `pairs` in `workers` forked processes; call on_done(n) as verdicts land."""
    load_litellm()  # import once, before forking, so that every worker starts warm
    context = multiprocessing.get_context("fork")
    events: Queue[tuple[str, int, int]] = context.Queue()
    share = config.model_copy(update={"concurrency": max(1, -(-config.concurrency // workers))})
    processes = [context.Process(target=_shard, args=(pairs[i::workers], share, plan, results, events, workers),
                                 daemon=True)
                 for i in range(workers)]
    stats = ShardStats()
    reported = 0
    try:
        for process in processes:
            process.start()
        while reported < workers:
            try:
                kind, a, b = events.get(timeout=0.5)
            except queue_module.Empty:
                if all(not p.is_alive() for p in processes) and events.empty():
                    break  # a worker died without reporting; what it finished is in the file
                continue
            if kind == "done":
                on_done(a)
            else:
                stats.calls += a
                stats.cache_hits += b
                reported += 1
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                with contextlib.suppress(Exception):
                    process.join(timeout=5)
    stats.failed_workers = sum(1 for p in processes if p.exitcode not in (0, None))
    return stats
