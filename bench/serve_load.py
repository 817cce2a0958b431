"""Loopback load test of the guardrail service (`psyjudge serve`).

What is measured
----------------
The real server is started as its own process (`python -m judge.cli_serve --port 0 ...`: uvicorn
on 127.0.0.1, a free port), serving every built-in rubric, and awaited until /readyz answers 200.
An async httpx client in this process then sends POST /v1/judge requests from N concurrent
workers (N = 1, 4, 16, 64), each worker sending its next request as soon as the last one is
answered (a closed loop), for a bounded number of requests and a bounded time per level. Client
and server share this machine's cores: the figures are what one small box serves to itself, not a
server's ceiling.

The workers are spread over client processes of at most 16 connections each. One httpx client
with 64 connections spends several times more CPU per request in its connection pool than with 16
(measured here: 3.6 s of client CPU for 400 requests at 64, 0.7 s at 16), which made the client,
not the server, the bottleneck at 64 workers. The processes start together at an agreed time.

Requests are the project's own labelled examples (datasets/*/examples.jsonl: conversation,
response, region), cycled. Each carries a system turn naming its request number, so that every
request is distinct: the classifier tier keeps a per-content cache, and a load test of repeated
texts would measure the cache.

Scenarios:

* HTTP floor: GET /healthz on the same server, at the same levels: what uvicorn, the middleware and
  the client cost with no judging at all, to read the judging scenarios against;
* rules: the rules tier alone, with room for every worker (--max-concurrency 64 --queue 64);
* rules+classifier: the shipped classifier head over all-MiniLM-L6-v2 on CPU (torch), same room;
  skipped, with the reason written down, when torch or the classifier cannot load;
* saturation: 64 workers against --max-concurrency 8 --queue 16 (and --queue-wait 10), for both
  tier sets: what the 429s with Retry-After look like when the server is full. The client does not
  retry a 429: it counts it and sends its next request.

Per level: requests, throughput (answered 200s per second of wall time), latency p50/p95/p99 of
the 200s as the client saw them and as the server reported them (latency_ms, queue included),
429s, other errors, and the server process's CPU seconds per answered request (from /proc).
Latency is time.perf_counter() around each request in the client.

Usage: python bench/serve_load.py [--requests 400] [--seconds 15] [--out bench/results]

Writes serve_load.json and serve_load.md. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16, 64)
PER_CLIENT = 16
"""Connections per client process (see the module's docstring)."""
ROOMY = {"max_concurrency": 64, "queue": 64}
TIGHT = {"max_concurrency": 8, "queue": 16}


def examples() -> list[dict[str, Any]]:
    rows = []
    for path in sorted((ROOT / "datasets").glob("*/examples.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows.append({"messages": row.get("messages", []), "response": row["response"],
                             "region": row.get("region")})
    return rows


def request_body(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    row = rows[n % len(rows)]
    messages = [{"role": "system", "content": f"Conversation {n}."}, *row["messages"]]
    return {"messages": messages, "response": row["response"], "region": row["region"], "id": f"load-{n}"}


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(tiers: str, max_concurrency: int, queue: int) -> Iterator[tuple[str, int]]:
    """The real `serve` command on a free loopback port; yields (base URL, pid)."""
    command = [sys.executable, "-m", "judge.cli_serve", "--port", "0", "--tiers", tiers, "--max-concurrency",
               str(max_concurrency), "--queue", str(queue), "--queue-wait", "10", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    found = threading.Event()

    def drain() -> None:  # keep reading stderr so that the server never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "psyjudge serve: http://" in line:
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not found.wait(120):
            raise RuntimeError("the server did not start:\n" + "".join(lines[-20:]))
        port = re.search(r"http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert port is not None
        base = f"http://127.0.0.1:{port.group(1)}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the server never became ready:\n" + "".join(lines[-20:]))
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Sample:
    status: int
    seconds: float
    server_ms: float | None
    label: str | None


async def fire(base: str, rows: list[dict[str, Any]], concurrency: int, count: int, seconds: float,
               start_at: int, begin_at: float | None = None, floor: bool = False) -> tuple[list[Sample], float]:
    """`concurrency` closed-loop workers, until `count` requests were sent or `seconds` passed; from
    `begin_at` (time.time()) when given. `floor`: GET /healthz instead of judging, to measure the
    HTTP stack alone."""
    if begin_at is not None:
        await asyncio.sleep(max(0.0, begin_at - time.time()))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    samples: list[Sample] = []
    sent = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal sent
            while sent < count and time.perf_counter() < stop_at:
                body = request_body(rows, start_at + sent)
                sent += 1
                began = time.perf_counter()
                try:
                    reply = await (client.get("/healthz") if floor else client.post("/v1/judge", json=body))
                except httpx.HTTPError:
                    samples.append(Sample(0, time.perf_counter() - began, None, None))
                    continue
                took = time.perf_counter() - began
                data = reply.json() if reply.status_code == 200 and not floor else {}
                samples.append(Sample(reply.status_code, took, data.get("latency_ms"), data.get("label")))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return samples, wall


def _client(base: str, concurrency: int, count: int, seconds: float, start_at: int,
            begin_at: float, floor: bool) -> tuple[list[Sample], float]:
    return asyncio.run(fire(base, examples(), concurrency, count, seconds, start_at, begin_at, floor))


def fire_spread(base: str, rows: list[dict[str, Any]], concurrency: int, count: int, seconds: float,
                start_at: int, floor: bool = False) -> tuple[list[Sample], float]:
    """`fire` over ceil(concurrency / PER_CLIENT) client processes, the requests split between them."""
    clients = -(-concurrency // PER_CLIENT)
    if clients == 1:
        return asyncio.run(fire(base, rows, concurrency, count, seconds, start_at, floor=floor))
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    counts = [count // clients + (i < count % clients) for i in range(clients)]
    begin_at = time.time() + 5.0  # time for every process to start and import httpx
    with ProcessPoolExecutor(clients) as pool:
        futures = [pool.submit(_client, base, shares[i], counts[i], seconds, start_at + sum(counts[:i]), begin_at,
                               floor) for i in range(clients)]
        parts = [f.result() for f in futures]
    return [s for samples, _ in parts for s in samples], max(wall for _, wall in parts)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(samples: list[Sample], wall: float, cpu: float | None, concurrency: int) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    ms = sorted(s.seconds * 1000 for s in ok)
    server_ms = sorted(s.server_ms for s in ok if s.server_ms is not None)
    rejected = [s for s in samples if s.status == 429]
    errors = [s for s in samples if s.status not in (200, 429)]
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(ok) / wall, 1) if wall > 0 else None,
        "p50_ms": _r(percentile(ms, 50)), "p95_ms": _r(percentile(ms, 95)), "p99_ms": _r(percentile(ms, 99)),
        "server_p50_ms": _r(percentile(server_ms, 50)), "server_p99_ms": _r(percentile(server_ms, 99)),
        "rejected_429": len(rejected),
        "rejected_p50_ms": _r(percentile(sorted(s.seconds * 1000 for s in rejected), 50)),
        "errors": len(errors),
        "error_statuses": dict(Counter(str(s.status) for s in errors)),
        "error_rate": round(len(errors) / len(samples), 4) if samples else None,
        "labels": dict(Counter(s.label for s in ok if s.label)),
        "server_cpu_ms_per_ok": round(cpu * 1000 / len(ok), 3) if cpu is not None and ok else None,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run_scenario(name: str, tiers: str, room: dict[str, int], levels: tuple[int, ...], rows: list[dict[str, Any]],
                 count: int, seconds: float, floor: bool = False) -> dict[str, Any]:
    results = []
    with server(tiers, **room) as (base, pid):
        asyncio.run(fire(base, rows, 4, 40, 30, start_at=10_000_000))  # warm-up, not counted
        start = 0
        for level in levels:
            before = cpu_seconds(pid)
            samples, wall = fire_spread(base, rows, level, count, seconds, start_at=start, floor=floor)
            after = cpu_seconds(pid)
            start += len(samples)
            cpu = after - before if before is not None and after is not None else None
            results.append(summarise(samples, wall, cpu, level))
            # Other work on a shared machine shows here: the figures above are only as quiet as this.
            results[-1]["load_average_1m"] = round(os.getloadavg()[0], 2)
            print(f"{name} c={level}: {json.dumps(results[-1])}", flush=True)
    return {"name": name, "tiers": tiers, "server": room, "floor": floor, "levels": results}


def classifier_missing() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'psyjudge[classifier]')"
    try:
        from judge.classifier.model import check_loadable

        check_loadable()
    except Exception as exc:
        return f"the shipped classifier cannot load: {exc}"
    return None


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = ["# Guardrail service under load (loopback)", "",
           f"{m['cores']} cores, Python {m['python']} on {m['machine']}; client and server on the same machine. "
           f"Every built-in rubric served ({report['rubrics']} per request); requests are the project's labelled "
           f"examples, each made distinct. At most {report['requests_per_level']} requests or "
           f"{report['seconds_per_level']:g} s per level; closed-loop workers (at most {PER_CLIENT} per client "
           "process), no retries.", ""]
    header = ("| scenario | server slots / queue | workers | requests | 200/s | p50 ms | p95 ms | p99 ms | "
              "server p50 ms | 429s | 429 p50 ms | other errors | server CPU ms per 200 | load avg |")
    out += [header, "|" + "---|" * 14]
    for sc in report["scenarios"]:
        room = f"{sc['server']['max_concurrency']} / {sc['server']['queue']}"
        for level in sc["levels"]:
            lv = {k: "–" if v is None else v for k, v in level.items()}
            out.append(f"| {sc['name']} | {room} | {lv['concurrency']} | {lv['requests']} | {lv['throughput_rps']} | "
                       f"{lv['p50_ms']} | {lv['p95_ms']} | {lv['p99_ms']} | {lv['server_p50_ms']} | "
                       f"{lv['rejected_429']} | {lv['rejected_p50_ms']} | {lv['errors']} | "
                       f"{lv['server_cpu_ms_per_ok']} | {lv['load_average_1m']} |")
    for skipped in report["skipped"]:
        out.append(f"\nSkipped: {skipped['name']}: {skipped['reason']}.")
    busiest = max((lv["load_average_1m"] for sc in report["scenarios"] for lv in sc["levels"]), default=0.0)
    if busiest > (m["cores"] or 1):
        out.append(f"\nThe machine was shared with other work (load average up to {busiest:g} on {m['cores']} "
                   "cores): read the figures as orders of magnitude; on such a machine they move by a factor of "
                   "two or three between runs.")
    out += ["", "Latencies are of the answered (200) requests as the client measured them; `server p50` is the "
            "service's own latency_ms (queue wait included). A 429 is answered without judging, with Retry-After "
            "(its latency is the event loop's, behind the requests being judged); the client counts it and moves "
            "on. `server CPU` is the server process's CPU time over the level divided "
            "by its 200s; `load avg` is the machine's 1-minute load average after the level (with as many cores as "
            "above, a load well over that count means other work shared the machine).", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="At most this many requests per level.")
    parser.add_argument("--seconds", type=float, default=15.0, help="At most this long per level.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows = examples()
    from judge.rubrics import available_rubrics

    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "rubrics": len(available_rubrics()), "requests_per_level": args.requests, "seconds_per_level": args.seconds,
        "examples": len(rows), "scenarios": [], "skipped": [],
    }
    missing = classifier_missing()
    plans = [("HTTP floor: GET /healthz", "rules", ROOMY, LEVELS, True),
             ("rules", "rules", ROOMY, LEVELS, False), ("rules+classifier", "rules,classifier", ROOMY, LEVELS, False),
             ("saturation: rules", "rules", TIGHT, (64,), False),
             ("saturation: rules+classifier", "rules,classifier", TIGHT, (64,), False)]
    for name, tiers, room, levels, floor in plans:
        if "classifier" in tiers and missing:
            report["skipped"].append({"name": name, "reason": missing})
            continue
        report["scenarios"].append(run_scenario(name, tiers, room, levels, rows, args.requests, args.seconds, floor))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "serve_load.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
