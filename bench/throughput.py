"""Batch throughput of psyjudge against a loopback OpenAI-compatible server.

What is measured
----------------
`judge.runner.run_score` is called in this process, exactly as the `psyjudge score` command calls
it, on N synthetic chat-log records judged under the built-in `self_harm` rubric. The judge model
is `openai/fake-judge` served by `tests/fakes/openai_server.py` with the keyword judge as its
responder, so every request goes through the real stack: rubric rendering, litellm, the openai
client, HTTP on 127.0.0.1, reply validation, the JSON reply cache and the append-only
results.jsonl. Every record is distinct and every scenario gets a fresh output folder and a fresh
cache folder, so each record costs one real model call (except in the cache scenario, on purpose).

Scenarios:

* server latency 200 ms at concurrency 1, 8 and 32. With a 200 ms model the best a client can do
  is concurrency / 0.2 records/s; the table gives the share of that ideal that psyjudge reaches
  and the per-record latency (Verdict.latency_s, p50/p95) read back from results.jsonl.
  Concurrency 1 runs fewer records (40 by default) to keep the run short.
* an instant server (latency 0) at concurrency 1 and 32: wall time / records is then psyjudge's
  own cost per record (render, litellm call, HTTP, parse, store), with nothing to wait for.
* a cache re-run: the concurrency-32 input again, into the same output folder after deleting
  results.jsonl but keeping the cache, so every verdict comes from the cache (model calls == 0).

run_score spreads a run over worker processes when many calls are in flight (judge/workers.py:
one event loop per 8 calls, up to twice the cores); the table's workers column says how many ran.
Wall time is time.perf_counter() around run_score; client CPU time is time.process_time() of this
process (all its threads) plus the CPU of its reaped worker processes, around the same call.
The server's CPU time is read from /proc where available. litellm takes seconds to import and
does lazy set-up on its first call, so both are done once before anything is timed (a 3-record
warm-up run) and reported separately.

Why the server runs in another process
---------------------------------------
The fake server is pure Python (ThreadingHTTPServer plus a regex-based responder). Inside the
client's process its threads would hold the same GIL as the event loop being measured, so every
reply it builds would be charged to psyjudge and the client's CPU time would include the
server's. As a separate process (started with `python -m tests.fakes.openai_server`, awaited on
its READY line, terminated at the end, also on error) it costs the client nothing but the socket.

The issue's target is at least 80% of the ideal 160 records/s at concurrency 32 with 200 ms
latency. Whether it was met is written to the outputs as a fact; this script never fails on it.

Each scenario runs --repeats times (default 2), the repeats going round all scenarios, and the
median run by records/s is reported with every run's rate beside it: on a small shared machine
the spread between runs is often 10-20%.

Usage: python bench/throughput.py [--records N] [--out bench/results] [--repeats R]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO_LOG = REPO / "datasets" / "demo" / "chat_log.jsonl"
RUBRIC_ID = "self_harm"
MODEL = "openai/fake-judge"
SLOW_LATENCY_S = 0.2
TARGET_CONCURRENCY = 32
TARGET_SHARE = 0.80
READY_TIMEOUT_S = 60.0


# --- the fake server, out of process -------------------------------------------------------------


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[str]

    def cpu_s(self) -> float | None:
        """User + system CPU seconds the server process has used so far (Linux /proc only)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None


@contextlib.contextmanager
def fake_server(latency_s: float, log_dir: Path) -> Iterator[ServerProcess]:
    """Start the loopback server in its own process, wait for READY, and always stop it."""
    log_path = log_dir / f"server-{latency_s:g}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0",
             "--latency", str(latency_s), "--responder", "tests.fakes.keyword_judge:respond"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            base_url = _await_ready(process, log_path)
            yield ServerProcess(base_url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _await_ready(process: subprocess.Popen[str], log_path: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:  # EOF: the server exited before it was ready
                break
            if line.startswith("READY "):
                return line.split(maxsplit=1)[1].strip()
    raise RuntimeError(f"the fake server did not print READY within {READY_TIMEOUT_S:.0f} s "
                       f"(exit code {process.poll()}); its stderr:\n{log_path.read_text()[-2000:]}")


# --- synthetic input ----------------------------------------------------------------------------


def demo_rows() -> list[dict[str, Any]]:
    """The demo log's rows that psyjudge accepts (the log also holds two deliberately bad rows)."""
    from judge.ingest import read_records

    accepted = {record.id for record in read_records(DEMO_LOG).records}
    rows = []
    for line in DEMO_LOG.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("id") in accepted:
            rows.append(row)
    if not rows:
        raise RuntimeError(f"no usable rows in {DEMO_LOG}")
    return rows


def write_records(path: Path, count: int, tag: str, templates: list[dict[str, Any]]) -> None:
    """`count` distinct records: the demo rows in turn, each response given a unique suffix so that
    every record (and so every judge request) differs from every other."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            row = json.loads(json.dumps(templates[i % len(templates)]))  # a deep copy
            row["id"] = f"{tag}-{i:06d}"
            suffix = f" (ref {tag}-{i})"
            if "messages" in row:
                row["messages"][-1]["content"] += suffix  # the last turn is the assistant's response
            else:
                row["response"] += suffix
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- one measured run ---------------------------------------------------------------------------


@dataclass
class Measurement:
    scenario: str
    server_latency_ms: float
    concurrency: int
    records: int
    wall_s: float
    records_per_s: float
    ideal_records_per_s: float | None
    pct_of_ideal: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    overhead_ms_per_record: float
    client_cpu_s: float
    client_cpu_ms_per_record: float
    server_cpu_ms_per_record: float | None
    workers: int
    model_calls: int | None
    cache_hits: int | None
    errors: int
    client_busy_pct: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    note: str = ""
    records_per_s_runs: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def client_cpu() -> float:
    """CPU seconds of this process plus its finished, reaped children: run_score's worker
    processes are children, and they are joined before it returns. The loopback server is a child
    too, but it is still running, so it is not in RUSAGE_CHILDREN; it is measured from /proc."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def result_latencies(out_dir: Path) -> list[float]:
    from judge.runner import RESULTS_FILE

    latencies = []
    with open(out_dir / RESULTS_FILE, encoding="utf-8") as handle:
        for line in handle:
            latencies.append(float(json.loads(line)["latency_s"]))
    return latencies


def measure(scenario: str, input_path: Path, out_dir: Path, cache_dir: Path, server: ServerProcess,
            latency_s: float, concurrency: int, note: str = "") -> Measurement:
    from judge.models import JudgeConfig
    from judge.rubrics import load_rubric
    from judge.runner import run_score

    rubric = load_rubric(RUBRIC_ID)
    config = JudgeConfig(model=MODEL, api_base=server.base_url, concurrency=concurrency,
                         cache_dir=cache_dir, retry_initial_wait_s=0)
    server_cpu_before = server.cpu_s()
    cpu_before = client_cpu()
    started = time.perf_counter()
    outcome = run_score(input_path, [rubric], out_dir, config, progress=False)
    wall = time.perf_counter() - started
    cpu = client_cpu() - cpu_before
    server_cpu_after = server.cpu_s()

    summary = outcome.summary
    this_run = summary["this_run"]
    records = int(this_run["scored"])
    latencies = result_latencies(out_dir)
    ideal = concurrency / latency_s if latency_s > 0 else None
    rate = records / wall if wall > 0 else 0.0
    server_cpu = (None if server_cpu_before is None or server_cpu_after is None or not records
                  else round((server_cpu_after - server_cpu_before) / records * 1000, 3))
    return Measurement(
        scenario=scenario,
        server_latency_ms=round(latency_s * 1000, 1),
        concurrency=concurrency,
        records=records,
        wall_s=round(wall, 3),
        records_per_s=round(rate, 2),
        ideal_records_per_s=round(ideal, 2) if ideal else None,
        pct_of_ideal=round(100 * rate / ideal, 1) if ideal else None,
        latency_p50_ms=_ms(percentile(latencies, 50)),
        latency_p95_ms=_ms(percentile(latencies, 95)),
        overhead_ms_per_record=round(wall / records * 1000, 3) if records else 0.0,
        client_cpu_s=round(cpu, 3),
        client_cpu_ms_per_record=round(cpu / records * 1000, 3) if records else 0.0,
        server_cpu_ms_per_record=server_cpu,
        workers=int(this_run.get("workers") or 1),
        model_calls=this_run.get("model_calls"),
        cache_hits=this_run.get("cache_hits"),
        errors=int(summary.get("errors", 0)),
        client_busy_pct=round(100 * cpu / wall, 1) if wall > 0 else 0.0,
        labels=dict(summary.get("by_label", {})),
        note=note,
        records_per_s_runs=[round(rate, 2)],
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _fresh(root: Path, name: str) -> tuple[Path, Path]:
    out_dir, cache_dir = root / name / "out", root / name / "cache"
    out_dir.mkdir(parents=True)
    return out_dir, cache_dir


# --- the whole bench ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    latency_s: float
    concurrency: int
    small: bool = False  # use the short input (the 200 ms, concurrency-1 case)
    note: str = ""


def scenarios(c1_records: int) -> list[Scenario]:
    own = "latency 0: wall/records = psyjudge's own cost per record"
    return [
        Scenario("latency200-c1", SLOW_LATENCY_S, 1, small=True,
                 note=f"{c1_records} records only, to keep the run short"),
        Scenario("latency200-c8", SLOW_LATENCY_S, 8),
        Scenario(f"latency200-c{TARGET_CONCURRENCY}", SLOW_LATENCY_S, TARGET_CONCURRENCY),
        Scenario("instant-c1", 0.0, 1, note=own),
        Scenario(f"instant-c{TARGET_CONCURRENCY}", 0.0, TARGET_CONCURRENCY, note=own),
    ]


def representative(runs: list[Measurement]) -> Measurement:
    """The median run by records/s, carrying every run's rate so that the spread is visible."""
    ordered = sorted(runs, key=lambda m: m.records_per_s)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.records_per_s_runs = [m.records_per_s for m in runs]
    return chosen


def run_bench(records: int, c1_records: int, repeats: int) -> dict[str, Any]:
    # Imports and litellm's lazy set-up are paid here, once, and reported on their own.
    import_started = time.perf_counter()
    import judge.models  # first: it sets LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
    import judge.runner

    importlib.import_module("litellm")
    import_s = time.perf_counter() - import_started

    plan = scenarios(c1_records)
    rerun_name = f"cache-rerun-c{TARGET_CONCURRENCY}"
    runs: dict[str, list[Measurement]] = {s.name: [] for s in plan}
    runs[rerun_name] = []
    with tempfile.TemporaryDirectory(prefix="psyjudge-bench-") as tmp:
        root = Path(tmp)
        templates = demo_rows()
        main_input, c1_input, warm_input = (root / "records.jsonl", root / "records-c1.jsonl",
                                            root / "warmup.jsonl")
        write_records(main_input, records, "r", templates)
        write_records(c1_input, c1_records, "c1", templates)
        write_records(warm_input, 3, "warm", templates)

        with fake_server(SLOW_LATENCY_S, root) as slow, fake_server(0.0, root) as instant:
            servers = {SLOW_LATENCY_S: slow, 0.0: instant}
            warm_started = time.perf_counter()
            for latency, server in servers.items():
                out_dir, cache_dir = _fresh(root, f"warmup-{latency:g}")
                measure("warmup", warm_input, out_dir, cache_dir, server, latency, 3)
            warmup_s = time.perf_counter() - warm_started

            # Repeats go round the scenarios, so that a slow spell of the machine hits all alike.
            for repeat in range(repeats):
                for scenario in plan:
                    out_dir, cache_dir = _fresh(root, f"{scenario.name}-{repeat}")
                    source = c1_input if scenario.small else main_input
                    server = servers[scenario.latency_s]
                    run = measure(scenario.name, source, out_dir, cache_dir, server,
                                  scenario.latency_s, scenario.concurrency, note=scenario.note)
                    runs[scenario.name].append(run)
                    print(f"[{repeat + 1}/{repeats}] {_line(run)}", flush=True)
                    if scenario.name != f"latency200-c{TARGET_CONCURRENCY}":
                        continue
                    # Same input, output folder and cache again; only results.jsonl is gone.
                    (out_dir / judge.runner.RESULTS_FILE).unlink()
                    rerun = measure(rerun_name, source, out_dir, cache_dir, server,
                                    scenario.latency_s, scenario.concurrency,
                                    note="results.jsonl deleted, cache kept: every verdict from "
                                         "the cache")
                    rerun.ideal_records_per_s = rerun.pct_of_ideal = None  # nothing to wait for
                    rerun.note += f"; model calls = {rerun.model_calls}"
                    runs[rerun_name].append(rerun)
                    print(f"[{repeat + 1}/{repeats}] {_line(rerun)}", flush=True)
        shutil.rmtree(root, ignore_errors=True)

    measurements = [representative(r) for r in runs.values()]
    target = next(m for m in measurements if m.scenario == f"latency200-c{TARGET_CONCURRENCY}")
    target_rate = TARGET_SHARE * TARGET_CONCURRENCY / SLOW_LATENCY_S
    return {
        "benchmark": "psyjudge batch throughput against a loopback OpenAI-compatible server",
        "machine": machine_info(),
        "settings": {
            "records": records, "records_concurrency_1": c1_records, "repeats": repeats,
            "rubric": RUBRIC_ID, "judge_model": MODEL,
            "responder": "tests.fakes.keyword_judge:respond",
            "server": "tests.fakes.openai_server, separate process, 127.0.0.1",
            "reported_run": "the median run by records/s of each scenario",
        },
        "import_s": round(import_s, 3),
        "warmup_s": round(warmup_s, 3),
        "target": {
            "description": (f"concurrency {TARGET_CONCURRENCY}, {SLOW_LATENCY_S * 1000:.0f} ms "
                            f"latency: at least {TARGET_SHARE:.0%} of the ideal "
                            f"{TARGET_CONCURRENCY / SLOW_LATENCY_S:.0f} records/s"),
            "required_records_per_s": round(target_rate, 2),
            "measured_records_per_s": target.records_per_s,
            "measured_records_per_s_runs": target.records_per_s_runs,
            "pct_of_ideal": target.pct_of_ideal,
            "met": target.records_per_s >= target_rate,
        },
        "cache_rerun_model_calls_zero": all(m.model_calls == 0 for m in runs[rerun_name]),
        "all_runs_error_free": all(m.errors == 0 for r in runs.values() for m in r),
        "scenarios": [asdict(m) for m in measurements],
    }


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "litellm": version("litellm"),
        "openai": version("openai"),
        "httpx": version("httpx"),
        "aiohttp": version("aiohttp"),
        "psyjudge": version("psyjudge"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- reporting ----------------------------------------------------------------------------------


def _line(m: Measurement) -> str:
    return (f"{m.scenario:>20}: {m.records:4d} records in {m.wall_s:7.3f} s = "
            f"{m.records_per_s:7.2f} rec/s, cpu {m.client_cpu_ms_per_record:6.2f} ms/rec, "
            f"errors {m.errors}")


def _cell(value: Any, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    target = report["target"]
    rows = [
        "| scenario | server latency | concurrency | workers | records | wall s | records/s (all runs) "
        "| ideal/s | % of ideal | p50 ms | p95 ms | wall ms/record | client CPU ms/record "
        "| client CPU busy | server CPU ms/record | model calls | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["scenarios"]:
        spread = ", ".join(f"{r:.0f}" for r in m["records_per_s_runs"])
        rows.append(
            f"| {m['scenario']} | {m['server_latency_ms']:.0f} ms | {m['concurrency']} | {m['workers']} "
            f"| {m['records']} | {m['wall_s']:.2f} | {m['records_per_s']:.1f} ({spread}) "
            f"| {_cell(m['ideal_records_per_s'], '{:.0f}')} | {_cell(m['pct_of_ideal'], '{:.1f}%')} "
            f"| {_cell(m['latency_p50_ms'], '{:.0f}')} | {_cell(m['latency_p95_ms'], '{:.0f}')} "
            f"| {m['overhead_ms_per_record']:.2f} | {m['client_cpu_ms_per_record']:.2f} "
            f"| {m['client_busy_pct']:.0f}% | {_cell(m['server_cpu_ms_per_record'], '{:.2f}')} "
            f"| {_cell(m['model_calls'])} | {m['errors']} |")
    notes = [f"- `{m['scenario']}`: {m['note']}" for m in report["scenarios"] if m["note"]]
    verdict = "**met**" if target["met"] else "**not met**"
    settings = report["settings"]
    return "\n".join([
        "# psyjudge batch throughput",
        "",
        f"Measured {machine['date']} on {machine['platform']}, {machine['cpu_count']} CPU cores "
        f"(os.cpu_count(); {machine['usable_cpus']} usable), Python {machine['python']}, "
        f"litellm {machine['litellm']}, openai {machine['openai']}, httpx {machine['httpx']}, "
        f"aiohttp {machine['aiohttp']}.",
        "",
        f"`judge.runner.run_score` was called in-process on {settings['records']} distinct "
        f"synthetic records (the demo log's responses, each with a unique suffix) under the "
        f"`{settings['rubric']}` rubric, with judge `{settings['judge_model']}` served by the "
        f"loopback fake OpenAI server (`{settings['responder']}`) running in a separate process "
        f"so that it does not share the client's GIL. Every scenario used a fresh output folder "
        f"and a fresh cache, so each record cost one real HTTP call, except the cache re-run, "
        f"which repeats the concurrency-{TARGET_CONCURRENCY} input after deleting results.jsonl "
        f"and keeping the cache. Wall time is `time.perf_counter()` around `run_score`; client CPU "
        f"is `time.process_time()` of the client process plus its reaped worker processes; server "
        f"CPU is read from /proc. p50/p95 "
        f"are each verdict's own `latency_s` from results.jsonl. Ideal records/s = concurrency / "
        f"server latency. Importing psyjudge and litellm took {report['import_s']:.2f} s and a "
        f"3-record warm-up run per server took {report['warmup_s']:.2f} s in all; neither is in "
        f"the table. Each scenario ran {settings['repeats']} time(s), the repeats going round "
        f"all scenarios; the table shows the median run by records/s, with every run's "
        f"records/s in brackets. With the instant server, wall ms/record is psyjudge's own cost "
        f"per record (render, litellm call, HTTP, parse, store). Client CPU busy = client CPU "
        f"time / wall time: near 100% means the client, not the model, is the limit (it can "
        f"pass 100% because litellm runs part of each call on a worker thread).",
        "",
        *rows,
        "",
        *notes,
        "",
        f"Target ({target['description']}, i.e. ≥ {target['required_records_per_s']:.0f} "
        f"records/s): {verdict} — measured {target['measured_records_per_s']:.1f} records/s, "
        f"{target['pct_of_ideal']:.1f}% of ideal.",
        f"Cache re-run made zero model calls: {report['cache_rerun_model_calls_zero']}. "
        f"All runs error-free: {report['all_runs_error_free']}.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1280,
                        help="records per scenario (default 1280: about 8 s at the ideal rate of concurrency 32, "
                             "long enough that start-up is not what is measured)")
    parser.add_argument("--c1-records", type=int, default=40,
                        help="records for the 200 ms concurrency-1 scenario (default 40)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="folder for throughput.json and throughput.md")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each scenario; the median run is reported (default 2)")
    args = parser.parse_args(argv)
    if args.records < 1 or args.c1_records < 1 or args.repeats < 1:
        parser.error("--records, --c1-records and --repeats must be at least 1")

    # A plain SIGTERM would end Python without running `finally`, orphaning the server processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run_bench(args.records, min(args.c1_records, args.records), args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (args.out / "throughput.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
