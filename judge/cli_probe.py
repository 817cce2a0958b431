"""The `psyjudge probe` command: bias probes (judge.probes) over a chat log. It reports flip rates and
does not gate: exit 0 whatever the rates, 2 on bad usage, 3 when the input cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from judge.cli_common import (
    EXIT_INPUT,
    EXIT_USAGE,
    ApiBaseOpt,
    ApiKeyOpt,
    AttemptsOpt,
    CacheDirOpt,
    ClassifierModelOpt,
    ClassifierRuntimeOpt,
    ColumnOpt,
    ConcurrencyOpt,
    FormatOpt,
    JudgeOpt,
    LocalOnlyOpt,
    ModeOpt,
    NoCacheOpt,
    NoProgramsOpt,
    ProgressOpt,
    RedactOpt,
    RubricsDir,
    RulesThresholdOpt,
    StrictOpt,
    TiersOpt,
    TimeoutOpt,
    _fail,
    _judge_options,
    _rubric,
    build_plan,
    input_columns,
    judging,
)
from judge.ingest import InputError, read_records
from judge.outputs import PROBES_FILE


def probe(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Chat log: .jsonl, .csv or .parquet.")],
    rubric: Annotated[list[str], typer.Option("--rubric", "-r", help="Rubric id or folder; repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (probes.json, probe_results.jsonl).")]
    = Path("reports/probe"),
    probes: Annotated[str | None, typer.Option(
        "--probes", help="Comma-separated probes (default: all): apology_add, apology_strip, verbosity, injection, "
        "obfuscation_leet, obfuscation_base64.")] = None,
    gold: Annotated[str | None, typer.Option(
        "--gold", help="Input column with gold labels: the obfuscation probes then run on the records whose gold "
        "label is HARMFUL, instead of those psyjudge labels HARMFUL as written.")] = None,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Probe a random subset of this many "
                                               "records.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Rejudge ERROR verdicts of an earlier "
                                               "run.")] = False,
    column: ColumnOpt = None,
    input_format: FormatOpt = None,
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 8,
    max_attempts: AttemptsOpt = 4,
    timeout: TimeoutOpt = 120.0,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    progress: ProgressOpt = None,
    tiers: TiersOpt = None,
    mode: ModeOpt = "cascade",
    strict: StrictOpt = False,
    rules_threshold: RulesThresholdOpt = 0.9,
    no_programs: NoProgramsOpt = False,
    classifier_model: ClassifierModelOpt = None,
    classifier_runtime: ClassifierRuntimeOpt = "torch",
    local_only: LocalOnlyOpt = False,
    redact: RedactOpt = None,
    rubrics_dir: RubricsDir = None,
) -> None:
    """Judge each response as written and perturbed in ways that must not change its label (an apology
    added or removed, neutral padding, an instruction to the judge, obfuscation of harmful examples);
    report each probe's flip rate with a Wilson 95% interval. Writes probes.json to --out; a rerun resumes."""
    from judge.probes import format_probes, parse_probes, run_probes  # scipy and asyncio machinery only when probing
    from judge.runner import build_cascade

    try:
        names = parse_probes(probes)
    except ValueError as exc:
        _fail(f"--probes: {exc}", EXIT_USAGE)
    columns = input_columns(column, input_format)
    plan = build_plan(tiers, mode, strict, rules_threshold, no_programs, classifier_model, classifier_runtime)
    rubrics = [_rubric(ref, rubrics_dir) for ref in rubric]
    try:
        ingested = read_records(input_path, columns, input_format)
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    if not ingested.records:
        _fail(f"{input_path}: no readable records ({len(ingested.quarantined)} row(s) could not be read)", EXIT_INPUT)
    if gold is not None and not any(gold in r.meta.extra for r in ingested.records):
        _fail(f"--gold: no record has a column {gold!r}", EXIT_USAGE)
    options = _judge_options(api_base, api_key, concurrency, max_attempts, timeout, cache_dir, no_cache,
                             local_only=local_only, redact=redact)
    with judging(plan, judge, options, rubrics) as (config, description):
        typer.echo(f"mode: {plan.mode}; tiers: {', '.join(plan.tiers)}; judge: {description}", err=True)
        cascade, _ = build_cascade(config, plan)
        report = run_probes(ingested.records, rubrics, cascade, out, names, gold_column=gold,
                            concurrency=config.concurrency, sample=sample, seed=seed, progress=progress,
                            retry_errors=retry_errors, source=str(input_path), judge=description)
    if ingested.quarantined:
        typer.echo(f"{len(ingested.quarantined)} row(s) of the input could not be read and were left out "
                   "(`psyjudge score` writes them to quarantine.jsonl)", err=True)
    typer.echo(format_probes(report))
    typer.echo(f"\nprobes: {out / PROBES_FILE}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
    app.command("probe")(probe)
