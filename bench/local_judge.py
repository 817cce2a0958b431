"""Seconds per record of the embedded local judge, cold and warm, and how much of each prompt the
llama.cpp prompt cache served.

The judge is the real one (`--judge local`): llama.cpp in a child process serving the packaged
Qwen2.5-Coder-1.5B-Instruct Q4_K_M on this machine's CPU, with compact answers. The records are the
self_harm rubric's own labelled examples, judged one at a time in a fresh server:

* cold = the first record after the server starts (its prompt cache is empty);
* warm = every later record (the rubric prefix, which comes first in every prompt, is cached);
* prompt-cache share = cached input tokens / input tokens, from the server's usage report
  (prompt_tokens_details.cached_tokens);
* agreement = how many verdicts match the examples' expected labels (a small model on a hard set:
  a figure to track, not a benchmark of the method).

No reply cache is used. Figures go to bench/results/local_judge.json and .md; nothing is asserted.
Usage: python bench/local_judge.py [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run() -> dict[str, Any]:
    from judge.judges import JudgeChoice, open_judge
    from judge.procs import usable_cores
    from judge.rubrics import example_records, load_rubric
    from judge.runner import build_cascade

    rubric = load_rubric("self_harm")
    expected = {f"{rubric.id}:{e.id}": e.expected.value for e in rubric.spec.examples}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache, open_judge(JudgeChoice("local"), use_cache=False,
                                                            cache_dir=Path(cache)) as config:
        server_start_s = time.perf_counter() - started
        cascade, _ = build_cascade(config)

        async def judge_all() -> None:
            for record in example_records(rubric):
                t0 = time.perf_counter()
                verdict = await cascade.judge(record, rubric)
                usage = verdict.usage
                rows.append({
                    "record": record.id, "seconds": round(time.perf_counter() - t0, 2),
                    "label": verdict.label_name, "expected": expected[record.id],
                    "input_tokens": usage.input_tokens, "cached_input_tokens": usage.cached_input_tokens,
                    "output_tokens": usage.output_tokens, "error": verdict.error,
                })

        asyncio.run(judge_all())
    warm = rows[1:]
    cached = sum(r["cached_input_tokens"] for r in warm)
    total_in = sum(r["input_tokens"] for r in warm)
    return {
        "machine": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
                    "cores": usable_cores(), "python": platform.python_version()},
        "model": config.model,
        "server_start_s": round(server_start_s, 2),
        "cold_seconds": rows[0]["seconds"],
        "warm_seconds_mean": round(statistics.mean(r["seconds"] for r in warm), 2),
        "warm_seconds_median": round(statistics.median(r["seconds"] for r in warm), 2),
        "warm_prompt_cache_share": round(cached / total_in, 3) if total_in else None,
        "output_tokens_mean": round(statistics.mean(r["output_tokens"] for r in rows), 1),
        "agreement": f"{sum(r['label'] == r['expected'] for r in rows)}/{len(rows)}",
        "records": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Embedded local judge: seconds per record",
        "",
        f"Measured {report['machine']['date']} on {report['machine']['platform']}, {report['machine']['cores']} "
        f"cores, Python {report['machine']['python']}; judge `{report['model']}` (llama.cpp, CPU, one slot, "
        "compact answers), the self_harm rubric's 8 labelled examples one at a time in a fresh server, no reply cache.",
        "",
        f"- server start (model load): {report['server_start_s']} s",
        f"- cold (first record, empty prompt cache): {report['cold_seconds']} s",
        f"- warm (later records): mean {report['warm_seconds_mean']} s, median {report['warm_seconds_median']} s",
        f"- share of warm prompts served by the server's prompt cache: {report['warm_prompt_cache_share']}",
        f"- mean output tokens per record: {report['output_tokens_mean']}",
        f"- agreement with the examples' expected labels: {report['agreement']}",
        "",
        "| record | seconds | label | expected | input tokens | cached | output tokens |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in report["records"]:
        lines.append(f"| {r['record']} | {r['seconds']} | {r['label']} | {r['expected']} | {r['input_tokens']} "
                     f"| {r['cached_input_tokens']} | {r['output_tokens']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    report = run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local_judge.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "local_judge.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
