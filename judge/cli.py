"""The psyjudge command line. It parses options, calls the library and maps outcomes to exit codes;
the work itself lives in the library.

Exit codes: 0 ok; 1 a rubric's examples failed or an internal error; 2 bad usage or configuration
(unknown option value, broken rubric, no judge); 3 the input cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from judge.cli_classifier import classifier_app
from judge.cli_common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
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
    KeepPiiOpt,
    LocalOnlyOpt,
    ModeOpt,
    NoCacheOpt,
    NoProgramsOpt,
    ProgressOpt,
    RedactOpt,
    ReviewBelowOpt,
    RubricsDir,
    RulesThresholdOpt,
    SamplesOpt,
    SampleTemperatureOpt,
    StrictOpt,
    TiersOpt,
    TimeoutOpt,
    _fail,
    _judge,
    _judge_options,
    _rubric,
    build_plan,
    input_columns,
    judging,
)
from judge.cli_programs import programs_app, rules_app
from judge.cli_resources import app as resources_app
from judge.ingest import InputError
from judge.rubrics import RubricError, available_rubrics, check_examples, load_rubric

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Judge chatbot responses for psychological-safety harm.")
rubric_app = typer.Typer(no_args_is_help=True, help="List, show, render, lint and test rubrics.")
app.add_typer(rubric_app, name="rubric")
app.add_typer(resources_app, name="resources", help="The crisis-resource registry: list, check a response, lint.")
app.add_typer(programs_app, name="programs")
app.add_typer(rules_app, name="rules")
app.add_typer(classifier_app, name="classifier")


@app.command()
def score(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Chat log: .jsonl, .csv or .parquet.")],
    rubric: Annotated[list[str], typer.Option("--rubric", "-r", help="Rubric id or folder; repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("reports/run"),
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 8,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, max=64, help="Processes sharing the run (default: one per 8 calls in flight, "
        "up to twice the cores); the concurrency limit is split between them. With --engine ray: the "
        "actor pool's size (default 2), the limits held once for the whole pool.")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="local: this machine's processes. ray: a pool of Ray actors (the psyjudge "
        "extra named ray), on this machine or the cluster at --address; the same files come out.")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", help="With --engine ray: the cluster to join ('auto', or ray://HOST:10001); default: "
        "start Ray on this machine for the run.")] = None,
    rps: Annotated[float | None, typer.Option(
        "--rps", help="With --engine ray: judge requests per second across all "
        "workers (with --concurrency, one limit for the whole pool).")] = None,
    ray_gpus_per_worker: Annotated[float | None, typer.Option(
        "--ray-gpus-per-worker", min=0.0, help="With --engine ray: GPUs reserved for each actor (default 0).")] = None,
    ray_cpus_per_worker: Annotated[float | None, typer.Option(
        "--ray-cpus-per-worker", help="With --engine ray: CPUs reserved for each actor (default 1).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="With --engine ray: records per batch sent to an actor (default 64).")] = None,
    parts_format: Annotated[str | None, typer.Option(
        "--parts-format", help="With --engine ray: parquet (default) or jsonl, for the per-batch files under "
        "OUT/parts/.")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Rescore ERROR verdicts.")] = False,
    column: ColumnOpt = None,
    input_format: FormatOpt = None,
    max_attempts: AttemptsOpt = 4,
    timeout: TimeoutOpt = 120.0,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    progress: ProgressOpt = None,
    show: Annotated[bool | None, typer.Option("--show/--no-show", help="Print each verdict with its evidence "
                                              "(default: when at most 25 were scored).")] = None,
    tiers: TiersOpt = None,
    mode: ModeOpt = "cascade",
    strict: StrictOpt = False,
    rules_threshold: RulesThresholdOpt = 0.9,
    no_programs: NoProgramsOpt = False,
    classifier_model: ClassifierModelOpt = None,
    classifier_runtime: ClassifierRuntimeOpt = "torch",
    samples: SamplesOpt = 1,
    sample_temperature: SampleTemperatureOpt = None,
    review_below: ReviewBelowOpt = None,
    local_only: LocalOnlyOpt = False,
    redact: RedactOpt = None,
    keep_pii: KeepPiiOpt = False,
    rubrics_dir: RubricsDir = None,
) -> None:
    """Score every response in INPUT under each rubric; write results.jsonl, quarantine.jsonl and
    summary.json to --out. A rerun resumes."""
    from judge.runner import run_score  # pandas and asyncio machinery only when scoring

    columns = input_columns(column, input_format)
    plan = build_plan(tiers, mode, strict, rules_threshold, no_programs, classifier_model, classifier_runtime)
    ray_options = _ray_options(engine, address, workers, rps, ray_gpus_per_worker, ray_cpus_per_worker, batch_size,
                               parts_format)
    rubrics = [_rubric(ref, rubrics_dir) for ref in rubric]
    options = _judge_options(api_base, api_key, concurrency, max_attempts, timeout, cache_dir, no_cache,
                             samples=samples, sample_temperature=sample_temperature, review_below=review_below,
                             local_only=local_only, redact=redact, keep_pii=keep_pii)
    with judging(plan, judge, options, rubrics) as (config, description):
        typer.echo(f"mode: {plan.mode}; tiers: {', '.join(plan.tiers)}; judge: {description}"
                   f"{'; local only' if config.local_only else ''}{'; redacted' if config.redact else ''}"
                   f"{f'; engine ray, {ray_options.workers} workers' if ray_options else ''}", err=True)
        try:
            if ray_options is not None:
                from judge.ray_engine import RayEngineError, run_score_ray

                try:
                    outcome = run_score_ray(input_path, rubrics, out, config, ray_options, columns=columns,
                                            input_format=input_format, retry_errors=retry_errors,
                                            progress=progress, judge_description=description, plan=plan)
                except RayEngineError as exc:
                    _fail(str(exc), EXIT_FAILED)
            else:
                outcome = run_score(input_path, rubrics, out, config, columns=columns, input_format=input_format,
                                    retry_errors=retry_errors, progress=progress, workers=workers,
                                    judge_description=description, plan=plan)
        except InputError as exc:
            _fail(str(exc), EXIT_INPUT)
    s = outcome.summary
    run = s["this_run"]
    if show if show is not None else 0 < run["scored"] <= SHOW_AT_MOST:
        _show_verdicts(out)
    labels = ", ".join(f"{k} {v}" for k, v in sorted(s["by_label"].items()))
    typer.echo(f"{s['verdicts']} verdicts ({labels}); {s['quarantined']} row(s) quarantined; "
               f"{run['scored']} scored now, {run['skipped_already_done']} already done")
    tiers_line = ", ".join(f"{k} {v}" for k, v in sorted(s["by_deciding_tier"].items()))
    typer.echo(f"decided by: {tiers_line}" + (f"; {s['degraded']} degraded (no tier decided: a cheaper tier's "
                                               f"fallback, rescored by --retry-errors)" if s["degraded"] else ""))
    typer.echo(_ledger_line(s["ledger"]))
    if samples > 1:
        typer.echo(_agreement_line(s["agreement"]))
    if "by_record" in s:
        per_record = ", ".join(f"{k} {v}" for k, v in sorted(s["by_record"].items()))
        typer.echo(f"{s['records']} records across {len(rubrics)} rubrics, most severe applicable label: {per_record}")
    if run["scored"]:
        typer.echo(f"{run['wall_s'] / run['scored']:.3f} s per record; judge {s['judge_description']}; "
                   f"{run['model_calls']} model call(s), {run['cache_hits']} cache hit(s); "
                   f"cost ${s['cost_usd']:.4f}{'' if s['cost_complete'] else ' (price unknown for this model)'}")
    typer.echo(f"results:    {out / 'results.jsonl'}\nsummary:    {out / 'summary.json'}\n"
               f"quarantine: {out / 'quarantine.jsonl'}")
    if "by_record" in s:
        typer.echo(f"records:    {out / 'record_verdicts.jsonl'}")
    if "ray" in run:
        typer.echo(f"parts:      {run['ray']['parts_dir']} ({run['ray']['parts_written']} written now)")


SHOW_AT_MOST = 25


def _ray_options(engine: str, address: str | None, workers: int | None, rps: float | None, gpus: float | None,
                 cpus: float | None, batch_size: int | None, parts_format: str | None) -> Any:
    """The Ray engine's options (a judge.ray_engine.RayOptions), or None for the local engine; an
    option that only the Ray engine reads is a usage error without it."""
    if engine not in ("local", "ray"):
        _fail(f"--engine: unknown engine {engine!r}; expected local or ray", EXIT_USAGE)
    options: dict[str, tuple[str, Any]] = {
        "address": ("--address", address), "rps": ("--rps", rps), "gpus_per_worker": ("--ray-gpus-per-worker", gpus),
        "cpus_per_worker": ("--ray-cpus-per-worker", cpus), "batch_size": ("--batch-size", batch_size),
        "parts_format": ("--parts-format", parts_format)}
    given = {field: (flag, value) for field, (flag, value) in options.items() if value is not None}
    if engine == "local":
        if given:
            _fail(f"{', '.join(flag for flag, _ in given.values())}: only with --engine ray", EXIT_USAGE)
        return None
    from pydantic import ValidationError

    from judge.ray_engine import RayOptions  # pydantic only: Ray itself is imported when the run starts

    try:
        return RayOptions(workers=workers or 2, **{field: value for field, (_, value) in given.items()})
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = given.get(str(first["loc"][0]), (str(first["loc"][0]), None))[0]
        _fail(f"{flag}: {first['msg']}", EXIT_USAGE)


def _ledger_line(c: dict[str, Any]) -> str:
    """The cascade's economics in one line: who decided, LLM calls avoided, cost per 1,000 records."""
    shares = ", ".join(f"{t['tier']} {t['decided_share']:.0%}" for t in c["by_tier"])
    line = f"decided by a confident tier: {shares}"
    if c["llm_in_plan"]:
        line += (f"; LLM asked on {c['llm_verdicts']}/{c['verdicts']} verdicts, "
                 f"{c['llm_calls_avoided']} LLM call(s) avoided")
    per, only = c["per_1k_records"], c["llm_only_per_1k_records"]
    if per:
        line += f"; per 1,000 records ${per['cost_usd']:.4f}, {per['input_tokens'] + per['output_tokens']:.0f} tokens"
        if only and c["mode"] != "all":
            line += (f" (LLM-only: ${only['cost_usd']:.4f}, "
                     f"{only['input_tokens'] + only['output_tokens']:.0f} tokens; {c['llm_only_basis']})")
    return line


def _agreement_line(a: dict[str, Any]) -> str:
    """How reproducible the sampled judge's labels were, in one line."""
    if not a["sampled_verdicts"]:
        return f"agreement over {a['samples']} samples: no verdict was decided by the sampled judge"
    rates = ", ".join(f"{rate} {n}" for rate, n in a["by_rate"].items())
    return (f"agreement over {a['samples']} samples: {a['sampled_verdicts']} sampled verdict(s), mean rate "
            f"{a['mean_rate']:.3f} ({rates}); {a['below_threshold']} flagged for review (under "
            f"{a['review_below']:g} or tied), {a['ties']} tie(s), {a['failed_samples']} failed sample(s)")


def _show_verdicts(out: Path) -> None:
    """Each verdict with the sub-questions answered yes and their evidence."""
    from judge.runner import read_verdicts

    for row in read_verdicts(out):
        tier = next((t for t in row["tiers"] if t["tier"] == row.get("decided_by")), None)
        why = tier["fired_rule"] if tier else row.get("error")
        if row.get("degraded") and tier:
            why = f"degraded: {tier.get('fallback_rule')}"
        typer.echo(f"{row['record_id']:<16} {row['label']:<10} {row['rubric']}  ({why})")
        for answer in (tier or {}).get("answers", []):
            if answer["value"] == "yes":
                quote = " ".join(answer["evidence"].split())[:90]
                typer.echo(f"{'':<18}yes  {answer['question_id']:<22} \"{quote}\"")


@rubric_app.command("list")
def rubric_list(rubrics_dir: RubricsDir = None) -> None:
    """List the rubrics that can be named by id."""
    for rubric_id, folder in sorted(available_rubrics(rubrics_dir or []).items()):
        try:
            rubric = load_rubric(str(folder))
            typer.echo(f"{rubric.key:<28} {rubric.spec.title}  ({folder})")
        except RubricError as exc:
            typer.echo(f"{rubric_id:<28} BROKEN: {exc}")


@rubric_app.command("show")
def rubric_show(ref: str, rubrics_dir: RubricsDir = None) -> None:
    """Show a rubric's sub-questions, verdict rule and examples."""
    rubric = _rubric(ref, rubrics_dir)
    spec = rubric.spec
    typer.echo(f"{rubric.key}: {spec.title}\nowner: {spec.owner}\nfolder: {rubric.folder}\n"
               f"includes: {', '.join(spec.include) or 'nothing'}\n"
               f"crisis lines shown to the judge: {', '.join(spec.resource_populations) or 'none'}\n\n"
               f"{spec.description.strip()}\n\nSub-questions:")
    for q in spec.sub_questions:
        na = " (n/a allowed)" if q.allows_na else ""
        typer.echo(f"  {q.id}{na}: {q.text}\n      why: {q.rationale}\n      source: {q.source}")
        if q.lexicon:
            typer.echo(f"      lexicon {q.lexicon}: {'; '.join(spec.lexicons[q.lexicon].terms)}")
    if spec.verdict.applies_when is not None:
        typer.echo(f"\nApplies when: {json.dumps(spec.verdict.applies_when)} "
                   "(otherwise SAFE and not applicable, unless a HARMFUL rule holds)")
    typer.echo("\nVerdict rule (first match wins):")
    for rule in spec.verdict.rules:
        typer.echo(f"  {rule.label.value:<10} {rule.name}: {json.dumps(rule.when)}")
    typer.echo(f"  {spec.verdict.otherwise.value:<10} otherwise\n\nExamples:")
    for ex in spec.examples:
        typer.echo(f"  {ex.id}: {ex.expected.value}  {ex.description}")


@rubric_app.command("render")
def rubric_render(
    ref: str,
    example: Annotated[str | None, typer.Option(help="Render for this example id (default: the first).")] = None,
    rubrics_dir: RubricsDir = None,
) -> None:
    """Print the exact prompt the judge would receive for one of the rubric's examples."""
    from judge.rubrics import example_records
    from judge.tiers.llm import build_messages

    rubric = _rubric(ref, rubrics_dir)
    records = {r.id.split(":", 1)[1]: r for r in example_records(rubric)}
    chosen = example or rubric.spec.examples[0].id
    if chosen not in records:
        _fail(f"--example: unknown example {chosen!r}; expected one of {', '.join(records)}", EXIT_USAGE)
    messages, _, _ = build_messages(records[chosen], rubric)
    for message in messages:
        typer.echo(f"===== {message['role']} =====\n{message['content']}\n")


@rubric_app.command("lint")
def rubric_lint(refs: list[str], rubrics_dir: RubricsDir = None) -> None:
    """Load and check rubrics: schema, rule references, templates (in the sandbox), examples."""
    bad = 0
    for ref in refs:
        try:
            rubric = load_rubric(ref, rubrics_dir or [])
        except RubricError as exc:
            bad += 1
            typer.secho(f"FAIL {exc}", fg=typer.colors.RED)
            continue
        failing = [o for o in check_examples(rubric) if not o.passed]
        if failing:
            bad += 1
            typer.secho(f"FAIL {rubric.key}: {len(failing)} example(s) disagree with the verdict rule",
                        fg=typer.colors.RED)
        else:
            typer.echo(f"ok   {rubric.key}")
    raise typer.Exit(EXIT_USAGE if bad else EXIT_OK)


@rubric_app.command("test")
def rubric_test(
    ref: str,
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", "-d", help="A labelled JSONL file (datasets/<rubric>/examples.jsonl) to check as well.")] = None,
    sample: Annotated[int | None, typer.Option(
        "--sample", min=1, help="With --judge: judge only this many dataset rows, taken in turn from each "
        "gold label in file order.")] = None,
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 4,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    rubrics_dir: RubricsDir = None,
) -> None:
    """Run the rubric's labelled examples (and a --dataset) through the verdict rule with the
    clinicians' answers, and, with --judge, through the judge model too. Exit 1 on any disagreement."""
    from judge.datasets import DatasetError, check_labelled, coverage, read_labelled, sample_rows

    rubric = _rubric(ref, rubrics_dir)
    failed = 0
    typer.echo(f"{rubric.key}: verdict rule on the clinician's answers")
    for outcome in check_examples(rubric):
        failed += not outcome.passed
        mark = "ok  " if outcome.passed else "FAIL"
        typer.echo(f"  {mark} {outcome.example:<28} expected {outcome.expected.value:<10} got "
                   f"{outcome.got.value if hasattr(outcome.got, 'value') else outcome.got} ({outcome.rule})")
    rows = []
    if dataset is not None:
        try:
            rows = read_labelled(dataset)
        except (OSError, DatasetError) as exc:
            _fail(f"--dataset: {exc}", EXIT_INPUT if isinstance(exc, OSError) else EXIT_USAGE)
        problems = check_labelled(rubric, rows)
        failed += len(problems)
        labels = ", ".join(f"{k} {v}" for k, v in sorted(coverage(rows)["labels"].items()))
        typer.echo(f"{dataset}: {len(rows)} rows ({labels}); {len(problems)} disagree with the verdict rule")
        for problem in problems:
            typer.echo(f"  FAIL {problem.row:<28} {problem.problem}")
    if judge:
        from judge.cascade import CascadeConfig
        from judge.runner import build_cascade, judge_examples, judge_labelled

        options = _judge_options(api_base, api_key, concurrency, 4, 120.0, cache_dir, no_cache)
        with _judge(judge, options, [rubric]) as (config, description):
            # The judge alone is what this measures: no rules tier in front of it.
            cascade, _ = build_cascade(config, CascadeConfig(tiers=["llm"]))
            typer.echo(f"{rubric.key}: judge {description}")
            for example_id, expected, verdict in judge_examples(rubric, cascade, config.concurrency):
                ok = verdict.label_name == expected
                failed += not ok
                why = verdict.error or next((t.fired_rule for t in verdict.tiers if t.fired_rule), "")
                typer.echo(f"  {'ok  ' if ok else 'FAIL'} {example_id:<28} expected {expected:<10} got "
                           f"{verdict.label_name} ({why})")
            if rows:
                chosen = sample_rows(rows, sample) if sample else rows
                judged = judge_labelled(rubric, chosen, cascade, config.concurrency)
                agree = sum(v.label_name == row.gold_label.value for row, v in judged)
                failed += len(judged) - agree
                typer.echo(f"{dataset}: judge agrees with the gold label on {agree}/{len(judged)} rows")
                for row, verdict in judged:
                    if verdict.label_name != row.gold_label.value:
                        wrong = [a.question_id for t in verdict.tiers for a in t.answers
                                 if row.gold_answers.get(a.question_id) not in (None, a.value)]
                        typer.echo(f"  FAIL {row.id:<28} gold {row.gold_label.value:<10} got {verdict.label_name:<10} "
                                   f"{verdict.error or 'answers differ on: ' + ', '.join(wrong)}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@app.command()
def doctor(
    judge: JudgeOpt = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Try starting the local server.")] = True,
) -> None:
    """Report which tiers are available, the judge a run would use, whether the embedded model file
    verifies, and whether a local server can start. Exit 1 if anything needed is missing."""
    from judge.judges import diagnose

    checks = diagnose(judge, start)
    for check in checks:
        typer.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<15} {check.detail}")
    needed = {"tiers", "judge", "server"}
    needed |= {"model file", "server package"} if judge in (None, "local") else set()
    raise typer.Exit(EXIT_OK if all(c.ok for c in checks if c.name in needed) else EXIT_FAILED)


# Commands that live in their own modules, added last so that each can import the shared options.
from judge import (  # noqa: E402
    cli_compare,
    cli_eval,
    cli_probe,
    cli_purge,
    cli_report,
    cli_run,
    cli_serve,
    cli_studio,
    cli_suites,
)

cli_eval.register(app)
cli_probe.register(app)
cli_report.register(app)
cli_run.register(app)
cli_suites.register(app)
cli_compare.register(app)
cli_purge.register(app)
cli_studio.register(app)
cli_serve.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
