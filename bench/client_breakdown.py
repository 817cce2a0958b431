"""Where the client's CPU goes per judged record: each layer of a judge call measured on its own.

`bench/throughput.py` measures whole runs. This script takes the same prompts and times, against
an instant loopback server (a separate process, for the reason given in throughput.py), one layer
of the stack at a time, all at the same concurrency:

* a bare aiohttp POST of the request body and a bare httpx POST (the transport floor),
* the openai SDK's AsyncOpenAI.chat.completions.create,
* litellm.acompletion with the arguments JudgeModel.complete passes,
* JudgeModel.complete (adds the cache key, tenacity, the semaphore, litellm.completion_cost),
* Cascade.judge with the LLM tier (adds rendering, parsing, grading, the cache write, the Verdict),

and then, without any network, the per-call CPU of the pure-Python steps psyjudge adds. The
difference between two adjacent rows is what a layer costs. CPU is time.process_time() of this
process (all threads), divided by the number of calls; it is a figure to compare rows with, and
it varies by 10-20% from run to run on a small shared machine.

Usage: python bench/client_breakdown.py [--calls N] [--concurrency C] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tb  # the sibling bench module: server, records, machine info


def _async_row(name: str, calls: int, concurrency: int, call: Callable[[int], Awaitable[Any]],
               close: Callable[[], Awaitable[Any]] | None = None) -> dict[str, Any]:
    """Run `calls` calls, at most `concurrency` at once, in a fresh event loop; then `close`
    (a client must be closed in the loop that opened it)."""

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> Any:
            async with gate:
                return await call(i)

        try:
            await asyncio.gather(*(one(i) for i in range(calls)))
        finally:
            if close is not None:
                await close()

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(main())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    row = {"layer": name, "cpu_ms_per_call": round(cpu / calls * 1000, 3),
           "calls_per_s": round(calls / wall, 1)}
    print(f"{name:58s} {row['cpu_ms_per_call']:7.3f} ms CPU/call  {row['calls_per_s']:8.1f} calls/s",
          flush=True)
    return row


def _sync_row(name: str, calls: int, step: Callable[[int], Any]) -> dict[str, Any]:
    cpu = time.process_time()
    for i in range(calls):
        step(i)
    cpu = time.process_time() - cpu
    row = {"layer": name, "cpu_ms_per_call": round(cpu / calls * 1000, 3), "calls_per_s": None}
    print(f"{name:58s} {row['cpu_ms_per_call']:7.3f} ms CPU/call", flush=True)
    return row


def run(calls: int, concurrency: int) -> dict[str, Any]:
    import aiohttp
    import httpx
    import openai

    from judge.cache import JsonCache, cache_key
    from judge.cascade import Cascade
    from judge.ingest import read_records
    from judge.models import JudgeConfig, JudgeModel  # sets LITELLM_LOCAL_MODEL_COST_MAP first
    from judge.rubrics import load_rubric
    from judge.runner import ResultsStore
    from judge.schema import Verdict
    from judge.tiers.llm import LLMTier, build_messages, parse_reply, response_format

    litellm: Any = importlib.import_module("litellm")
    rubric = load_rubric(tb.RUBRIC_ID)
    fmt = response_format(rubric)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="psyjudge-breakdown-") as tmp:
        root = Path(tmp)
        tb.write_records(root / "in.jsonl", calls, "b", tb.demo_rows())
        records = read_records(root / "in.jsonl").records
        messages = [build_messages(r, rubric)[0] for r in records]
        params = {"temperature": 0.0, "max_tokens": 2048, "response_format": fmt}

        with tb.fake_server(0.0, root) as server:
            url = server.base_url + "/chat/completions"

            def body(i: int) -> dict[str, Any]:
                return {"model": "fake-judge", "messages": messages[i], **params}

            async def warm() -> None:  # the first litellm call does lazy set-up: keep it out
                await litellm.acompletion(model=tb.MODEL, messages=messages[0], api_base=server.base_url,
                                          api_key="no-key-needed", max_retries=0, num_retries=0)
            asyncio.run(warm())

            session: dict[str, Any] = {}

            async def raw_aiohttp(i: int) -> Any:
                if "aiohttp" not in session:
                    session["aiohttp"] = aiohttp.ClientSession()
                async with session["aiohttp"].post(url, json=body(i)) as response:
                    return await response.json()

            rows.append(_async_row("aiohttp POST + json (bare transport)", calls, concurrency, raw_aiohttp,
                                   lambda: session.pop("aiohttp").close()))

            async def raw_httpx(i: int) -> Any:
                if "httpx" not in session:
                    session["httpx"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency))
                return (await session["httpx"].post(url, json=body(i))).json()

            rows.append(_async_row("httpx POST + json (bare transport)", calls, concurrency, raw_httpx,
                                   lambda: session.pop("httpx").aclose()))

            async def sdk(i: int) -> Any:
                if "openai" not in session:
                    session["openai"] = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
                return await session["openai"].chat.completions.create(
                    model="fake-judge", messages=messages[i], temperature=0.0, max_tokens=2048,
                    response_format=fmt)

            rows.append(_async_row("openai AsyncOpenAI.chat.completions.create (httpx)", calls,
                                   concurrency, sdk, lambda: session.pop("openai").close()))

            replies: list[Any] = []

            async def via_litellm(i: int) -> Any:
                reply = await litellm.acompletion(
                    model=tb.MODEL, messages=messages[i], api_base=server.base_url, api_key="no-key-needed",
                    timeout=120.0, max_retries=0, num_retries=0, **params)
                replies.append(reply)
                return reply

            rows.append(_async_row("litellm.acompletion", calls, concurrency, via_litellm))

            def config(cache_dir: Path | None) -> JudgeConfig:
                return JudgeConfig(model=tb.MODEL, api_base=server.base_url, concurrency=concurrency,
                                   cache_dir=cache_dir, use_cache=cache_dir is not None,
                                   retry_initial_wait_s=0)

            model = JudgeModel(config(None))
            texts: list[str] = []

            async def complete(i: int) -> Any:
                reply = await model.complete(messages[i], fmt, scope=rubric.key)
                texts.append(reply.text)
                return reply

            rows.append(_async_row("JudgeModel.complete (no cache)", calls, concurrency, complete))

            cascade = Cascade([LLMTier(JudgeModel(config(root / "cache")))])
            verdicts: list[Verdict] = []

            async def judge(i: int) -> Any:
                verdict = await cascade.judge(records[i], rubric)
                verdicts.append(verdict)
                return verdict

            rows.append(_async_row("Cascade.judge, LLM tier (cache miss + write)", calls, concurrency, judge))

        def cost(i: int) -> None:
            try:
                litellm.completion_cost(completion_response=replies[i])
            except Exception:  # the fake model is not in litellm's price map: that path is timed too
                pass

        cache = JsonCache(root / "put-cache")
        store = ResultsStore.open(root / "results.jsonl")
        keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(calls)]
        rows += [
            _sync_row("build_messages (render the rubric prompt)", calls,
                      lambda i: build_messages(records[i], rubric)),
            _sync_row("cache_key (sha256 of canonical JSON)", calls,
                      lambda i: cache_key(model=tb.MODEL, messages=messages[i], params=params, scope=rubric.key)),
            _sync_row("litellm.completion_cost (repeated by JudgeModel)", calls, cost),
            _sync_row("JsonCache.put", calls,
                      lambda i: cache.put(keys[i], {"model": tb.MODEL, "text": texts[i]})),
            _sync_row("JsonCache.get (hit)", calls, lambda i: cache.get(keys[i])),
            _sync_row("parse_reply", calls, lambda i: parse_reply(texts[i], rubric)),
            _sync_row("ResultsStore.append (one verdict)", calls, lambda i: store.append(verdicts[i])),
        ]
    return {
        "benchmark": "psyjudge client CPU per judge call, layer by layer, against an instant loopback server",
        "machine": tb.machine_info(),
        "calls": calls,
        "concurrency": concurrency,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# psyjudge client CPU per judge call, layer by layer",
        "",
        f"Measured {machine['date']} on {machine['cpu_count']} CPU cores (os.cpu_count()), Python "
        f"{machine['python']}, litellm {machine['litellm']}, openai {machine['openai']}, httpx "
        f"{machine['httpx']}, aiohttp {machine['aiohttp']}: {report['calls']} calls per row at "
        f"concurrency {report['concurrency']} against the loopback fake OpenAI server (instant "
        f"replies, separate process). CPU is time.process_time() of the client per call; rows "
        f"without calls/s ran without any network.",
        "",
        "| layer | client CPU ms/call | calls/s |",
        "|---|---:|---:|",
    ]
    for row in report["rows"]:
        rate = "–" if row["calls_per_s"] is None else f"{row['calls_per_s']:.0f}"
        lines.append(f"| {row['layer']} | {row['cpu_ms_per_call']:.3f} | {rate} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=tb.REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1:
        parser.error("--calls and --concurrency must be at least 1")
    report = run(args.calls, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client_breakdown.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "client_breakdown.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
