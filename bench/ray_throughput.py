"""Throughput of `psyjudge score --engine ray` with 1 and 2 workers against a loopback judge.

What is measured
----------------
`judge.ray_engine.run_score_ray` is called in this process, as `psyjudge score --engine ray` calls
it, on N distinct synthetic records (the demo log's rows, each response given a unique suffix) under
the built-in `self_harm` rubric, with the default cascade: the rules tier first, the LLM judge for
what the rules leave undecided. The judge is `openai/fake-judge` served by
`tests/fakes/openai_server.py` with a fixed latency (50 ms by default) and the keyword judge as its
responder, in its own process (so that its threads do not share a GIL with the driver). Ray runs on
this machine (`ray.init()` with every core), one CPU per actor; the limit is --concurrency calls in
flight for the whole pool (one limiter actor), no --rps. Every run gets a fresh output folder and a
fresh reply cache, so every LLM-decided record costs one real HTTP call.

For each run the table gives:

* end-to-end records/s: scored records / wall time of `run_score_ray` (ingest, starting the actor
  pool, every batch, summary). Starting a pool is seconds per actor (each imports litellm), so on a
  short run this is mostly start-up.
* steady records/s: records between the 10% and 90% marks of results.jsonl's growth (a thread
  counts its lines every 20 ms) over the time between them: the pool's rate once it runs.
* start-up s: from the call to the first verdict stored.

The local engine (`judge.runner.run_score`, its default workers) on the same input is given for
reference. Ray's own overhead (object store, scheduling, one process per actor) is part of what is
measured. Timings are facts about this machine; nothing here asserts on them.

Usage: python bench/ray_throughput.py [--records N] [--latency S] [--concurrency C] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO_LOG = REPO / "datasets" / "demo" / "chat_log.jsonl"
RUBRIC_ID = "self_harm"
MODEL = "openai/fake-judge"
RESPONDER = "tests.fakes.keyword_judge:respond"
READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def fake_server(latency_s: float, log_dir: Path) -> Iterator[str]:
    """The loopback judge in its own process; its base URL once it prints READY. Always stopped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with open(log_dir / "server.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0", "--latency", str(latency_s),
             "--responder", RESPONDER], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                deadline = time.monotonic() + READY_TIMEOUT_S
                while time.monotonic() < deadline and selector.select(timeout=deadline - time.monotonic()):
                    line = process.stdout.readline()
                    if not line:
                        break
                    if line.startswith("READY "):
                        yield line.split(maxsplit=1)[1].strip()
                        return
            raise RuntimeError(f"the fake server did not start: {(log_dir / 'server.log').read_text()[-2000:]}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_records(path: Path, count: int) -> None:
    """`count` distinct records from the demo log's accepted rows, each response with a unique suffix."""
    from judge.ingest import read_records

    accepted = {record.id for record in read_records(DEMO_LOG).records}
    rows = [row for row in (json.loads(line) for line in DEMO_LOG.read_text(encoding="utf-8").splitlines()
                            if line.strip().startswith("{"))
            if isinstance(row, dict) and row.get("id") in accepted]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            row = json.loads(json.dumps(rows[i % len(rows)]))
            row["id"] = f"bench-{i:06d}"
            if "messages" in row:
                row["messages"][-1]["content"] += f" (ref {i})"
            else:
                row["response"] += f" (ref {i})"
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


class Growth:
    """When results.jsonl reached each line count, sampled every 20 ms on a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Growth:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                lines = self.path.read_bytes().count(b"\n")
                self.samples.append((time.perf_counter() - self.t0, lines))

    def first_at(self, count: int) -> float | None:
        return next((t for t, n in self.samples if n >= count), None)


@dataclass
class Run:
    engine: str
    workers: int
    records: int
    wall_s: float
    records_per_s: float
    steady_records_per_s: float | None
    startup_s: float | None
    model_calls: int | None
    decided_by_llm: int
    errors: int


def measure(engine: str, workers: int, log: Path, root: Path, base_url: str, concurrency: int,
            score: Callable[..., Any]) -> Run:
    from judge.models import JudgeConfig

    out = root / f"{engine}-{workers}"
    config = JudgeConfig(model=MODEL, api_base=base_url, cache_dir=root / f"cache-{engine}-{workers}",
                         concurrency=concurrency, timeout_s=60)
    with Growth(out / "results.jsonl") as growth:
        t0 = time.perf_counter()
        summary = score(log, out, config, workers)
        wall = time.perf_counter() - t0
    scored = summary["this_run"]["scored"]
    t10, t90 = growth.first_at(max(1, scored // 10)), growth.first_at(scored * 9 // 10)
    steady = (scored * 9 // 10 - max(1, scored // 10)) / (t90 - t10) if t10 is not None and t90 and t90 > t10 else None
    first = growth.first_at(1)
    return Run(engine, summary["this_run"]["workers"], scored, round(wall, 3), round(scored / wall, 1),
               round(steady, 1) if steady else None, round(first, 2) if first is not None else None,
               summary["this_run"]["model_calls"], summary["by_deciding_tier"].get("llm", 0), summary["errors"])


def limiter_cost(pairs: int = 2000, parallel: int = 16) -> dict[str, float]:
    """What the shared limit costs a worker per judge call: `pairs` acquire + release round trips to
    the limiter actor from one actor, `parallel` at a time (as a worker's judge calls are)."""
    import asyncio

    import ray

    from judge.models import JudgeConfig
    from judge.ratelimit import ActorLimiter
    from judge.ray_engine import _start_limiter

    limiter = _start_limiter(ray, "psyjudge-bench-limit", JudgeConfig(model=MODEL, concurrency=parallel), None)

    class Caller:
        def run(self) -> tuple[float, float]:
            client = ActorLimiter(ray.get_actor("psyjudge-bench-limit"))

            async def loop() -> None:
                for _ in range(pairs // parallel):
                    await client.release(await client.acquire())

            async def main() -> None:
                await asyncio.gather(*(loop() for _ in range(parallel)))

            cpu, wall = time.process_time(), time.perf_counter()
            asyncio.run(main())
            return time.perf_counter() - wall, time.process_time() - cpu

    try:
        caller: Any = ray.remote(num_cpus=1)(Caller)
        wall, cpu = ray.get(caller.remote().run.remote())
    finally:
        ray.kill(limiter)
    return {"pairs": pairs, "parallel": parallel, "wall_ms_per_call": round(wall / pairs * 1000, 3),
            "caller_cpu_ms_per_call": round(cpu / pairs * 1000, 3)}


def machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "ray": version("ray"), "litellm": version("litellm"),
            "psyjudge": version("psyjudge"), "date": datetime.now(UTC).isoformat(timespec="seconds")}


def run_bench(records: int, latency_s: float, concurrency: int, batch_size: int) -> dict[str, Any]:
    import ray

    from judge.models import JudgeConfig
    from judge.ray_engine import RayOptions, run_score_ray
    from judge.rubrics import load_rubric
    from judge.runner import run_score

    rubric = load_rubric(RUBRIC_ID)
    runs: list[Run] = []
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine shows in every figure
    with tempfile.TemporaryDirectory(prefix="psyjudge-ray-bench-") as tmp:
        root = Path(tmp)
        log = root / "records.jsonl"
        write_records(log, records)
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - t0
        try:
            limiter = limiter_cost()
            with fake_server(latency_s, root) as base_url:
                # Ray Data's first execution in a driver starts machinery that later ones reuse: a small
                # warm-up run pays for it outside the table.
                warm_log = root / "warm-up.jsonl"
                write_records(warm_log, 20)
                t0 = time.perf_counter()
                run_score_ray(warm_log, [rubric], root / "warm-up", JudgeConfig(model=MODEL, api_base=base_url,
                              cache_dir=root / "cache-warm-up"), RayOptions(workers=1), progress=False)
                warm_up_s = time.perf_counter() - t0
                for workers in (1, 2):
                    runs.append(measure("ray", workers, log, root, base_url, concurrency,
                                        lambda log, out, config, w: run_score_ray(
                                            log, [rubric], out, config, RayOptions(workers=w, batch_size=batch_size),
                                            progress=False).summary))
                runs.append(measure("local", 0, log, root, base_url, concurrency,
                                    lambda log, out, config, w: run_score(log, [rubric], out, config,
                                                                          progress=False).summary))
        finally:
            ray.shutdown()
    return {"machine": {**machine(), "load_average_1min_before": load_before,
                        "load_average_1min_after": round(os.getloadavg()[0], 2)}, "settings": {
        "records": records, "rubric": RUBRIC_ID, "judge_model": MODEL, "responder": RESPONDER,
        "server_latency_ms": latency_s * 1000, "concurrency": concurrency, "batch_size": batch_size,
        "cascade": "rules, llm (the default)"}, "ray_init_s": round(ray_start_s, 2),
        "warm_up_s": round(warm_up_s, 2), "limiter": limiter, "runs": [asdict(r) for r in runs]}


def markdown(report: dict[str, Any]) -> str:
    m, s, lim = report["machine"], report["settings"], report["limiter"]
    rows = ["| engine | workers | records | wall s | end-to-end records/s | steady records/s | start-up s "
            "| decided by the LLM | model calls | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        rows.append(f"| {r['engine']} | {r['workers']} | {r['records']} | {r['wall_s']:.2f} | {r['records_per_s']:.1f} "
                    f"| {r['steady_records_per_s'] if r['steady_records_per_s'] is not None else '–'} "
                    f"| {r['startup_s'] if r['startup_s'] is not None else '–'} | {r['decided_by_llm']} "
                    f"| {r['model_calls']} | {r['errors']} |")
    return "\n".join([
        "# psyjudge on Ray: batch throughput",
        "",
        f"Measured {m['date']} on {m['platform']}, {m['cpu_count']} CPU cores ({m['usable_cpus']} usable), "
        f"Python {m['python']}, Ray {m['ray']}, litellm {m['litellm']}. Load average (1 min) "
        f"{m['load_average_1min_before']} before the runs, {m['load_average_1min_after']} after (which counts this "
        "benchmark's own processes)"
        + (": above the core count before the runs, so other work was competing for the CPUs and every figure is "
           "lower for it." if m["load_average_1min_before"] > m["usable_cpus"] else "."),
        "",
        f"`judge.ray_engine.run_score_ray` on {s['records']} distinct synthetic records (the demo log's rows, "
        f"each response with a unique suffix) under `{s['rubric']}`, cascade {s['cascade']}, judge "
        f"`{s['judge_model']}` on the loopback fake OpenAI server (`{s['responder']}`, {s['server_latency_ms']:.0f} "
        f"ms per reply) in its own process. Ray ran on this machine (`ray.init()` took {report['ray_init_s']} s and a "
        f"20-record warm-up run {report['warm_up_s']} s, neither in the table), one CPU per actor, batches of "
        f"{s['batch_size']} records, --concurrency {s['concurrency']} for the whole pool. Fresh output folder and "
        "reply cache per run. End-to-end = scored / "
        "wall time of the call, actor start-up included; steady = the 10%-90% stretch of results.jsonl's growth; "
        "start-up = call to the first verdict stored. The local engine (its default worker processes) on the same "
        "input is the reference.",
        "",
        *rows,
        "",
        f"The shared limit's cost per judge call, measured alone: {lim['pairs']} acquire + release round trips "
        f"from one actor, {lim['parallel']} at a time, took {lim['wall_ms_per_call']} ms of wall time and "
        f"{lim['caller_cpu_ms_per_call']} ms of the caller's CPU per call (the limiter actor's own CPU comes on top). "
        "On one machine every process here (driver, limiter, actors, fake server) shares the same cores, so that "
        "and each batch's fixed cost are not hidden by more machines.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per fake judge reply (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=16, help="judge calls in flight across the pool")
    parser.add_argument("--batch-size", type=int, default=64, help="records per batch (RayOptions' default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # tests.fakes for the server process's responder
    report = run_bench(args.records, args.latency, args.concurrency, args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (args.out / "ray_throughput.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
