"""`psyjudge eval` (agreement with human labels) and `psyjudge gate` (the release gate): parse the
options, call judge.evaluation and judge.gate, map the outcome to an exit code.

eval: 0 ok; 2 bad usage (a gold column the input lacks, labels that are not harm labels, a bad
option); 3 the input cannot be read. gate: 0 every threshold passed; 1 one failed; 2 bad usage
(no or bad policy, RESULTS not a run folder, a column the run does not have).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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
    ConcurrencyOpt,
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
from judge.ingest import ColumnMap, InputError

if TYPE_CHECKING:
    from judge.evaluation import EvalError

EVAL_ROOT = Path("reports/eval")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
    app.command("eval")(eval_command)
    app.command("gate")(gate_command)


def eval_command(
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT", help="A finished run folder (with results.jsonl), or a labelled file (.csv, .jsonl, "
        ".parquet) to score first.")],
    gold: Annotated[str, typer.Option("--gold", help="The input column holding the human label: SAFE, BORDERLINE "
                                      "or HARMFUL (UNSAFE counts as HARMFUL).")],
    rubric: Annotated[list[str] | None, typer.Option(
        "--rubric", "-r", help="For a file: rubric id or folder, repeatable (default: every built-in rubric).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="For a file: the run folder to score into (default: reports/eval/<input stem>, "
        "or reports/eval/<input stem>-sample<N>-seed<S> with --sample).")] = None,
    category_column: Annotated[str, typer.Option(
        "--category-column", help="Input column to break the figures down by ('' for none).")] = "category",
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, max=100_000,
                                           help="Bootstrap resamples for the 95% intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap and of --sample.")] = 0,
    sample: Annotated[int | None, typer.Option(
        "--sample", min=1, help="For a file: score only N records, a sample stratified by gold label (written "
        "into the run folder, so that a rerun resumes).")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the run's HTML report too.")] = True,
    column: Annotated[list[str] | None, typer.Option(
        "--column", help="For a file: map a field to an input column, e.g. --column response=answer.")] = None,
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 8,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64,
                                                help="Processes sharing the scoring run.")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Rescore ERROR verdicts.")] = False,
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
    """Agreement of psyjudge's labels with human labels: precision, recall and F1 per label, macro-F1,
    kappa, over-refusal, with bootstrap intervals; eval.json and eval.md in the run folder. A file is
    scored first (a rerun resumes and does not rescore)."""
    # Imported here: numpy, scikit-learn and the runner load only when the command runs.
    from judge.evaluation import EvalError, check_gold, evaluate_run, format_eval, write_eval

    if input_path.is_dir():
        given = [name for name, value in (("--rubric", rubric), ("--out", out), ("--sample", sample),
                                          ("--column", column)) if value]
        if given:
            _fail(f"{', '.join(given)}: only for a labelled file; {input_path} is a run folder, already scored",
                  EXIT_USAGE)
        run_dir = input_path
    else:
        run_dir = out or EVAL_ROOT / (input_path.stem + (f"-sample{sample}-seed{seed}" if sample else ""))
        columns = input_columns(column)
        plan = build_plan(tiers, mode, strict, rules_threshold, no_programs, classifier_model, classifier_runtime)
        if rubric:
            rubrics = [_rubric(ref, rubrics_dir) for ref in rubric]
        else:
            from judge.rubrics import available_rubrics

            rubrics = [_rubric(name, rubrics_dir) for name in sorted(available_rubrics(rubrics_dir or []))]
        from judge.ingest import read_records
        from judge.runner import run_score

        try:
            ingested = read_records(input_path, columns)
            # Before any judge call: a wrong --gold is found now, not after scoring the whole file.
            check_gold([r.meta.extra for r in ingested.records], gold)
        except InputError as exc:
            _fail(str(exc), EXIT_INPUT)
        except EvalError as exc:
            # A file whose every row is unreadable is an input problem; a wrong column is a usage one.
            _fail(_eval_error(exc), EXIT_INPUT if exc.kind == "empty" else EXIT_USAGE)
        score_input, score_columns = input_path, columns
        if sample is not None:
            from judge.atomic import ensure_private_dir, write_text_atomic
            from judge.evaluation import sample_lines, stratified_sample

            chosen = stratified_sample(ingested.records, gold, sample, seed)
            ensure_private_dir(run_dir)
            score_input, score_columns = run_dir / f"sample-{sample}-seed{seed}.jsonl", ColumnMap()
            write_text_atomic(score_input, sample_lines(chosen))
            typer.echo(f"sample: {len(chosen)} of {len(ingested.records)} records, stratified by {gold!r} "
                       f"(seed {seed}): {score_input}" + (f"; {len(ingested.quarantined)} unreadable row(s) of "
                                                          f"{input_path} quarantined" if ingested.quarantined else ""))
        options = _judge_options(api_base, api_key, concurrency, max_attempts, timeout, cache_dir, no_cache,
                                 local_only=local_only, redact=redact)
        with judging(plan, judge, options, rubrics) as (config, description):
            typer.echo(f"scoring {score_input} under {', '.join(rb.key for rb in rubrics)}; mode: {plan.mode}; "
                       f"tiers: {', '.join(plan.tiers)}; judge: {description}", err=True)
            try:
                outcome = run_score(score_input, rubrics, run_dir, config, columns=score_columns,
                                    retry_errors=retry_errors, progress=progress, workers=workers,
                                    judge_description=description, plan=plan)
            except InputError as exc:
                _fail(str(exc), EXIT_INPUT)
        run = outcome.summary["this_run"]
        typer.echo(f"run: {run_dir}: {run['scored']} verdict(s) scored now, {run['skipped_already_done']} already done")
    try:
        found = evaluate_run(run_dir, gold, category_column=category_column or None, bootstrap=bootstrap, seed=seed)
    except EvalError as exc:
        _fail(_eval_error(exc), EXIT_USAGE)
    json_path, md_path = write_eval(found, run_dir)
    typer.echo(format_eval(found))
    typer.echo(f"eval:       {json_path}\n            {md_path}")
    if report:
        _write_report(run_dir)


def _eval_error(exc: EvalError) -> str:
    return f"--gold: {exc}" if exc.kind in ("missing_column", "no_usable_gold") else str(exc)


def _write_report(run_dir: Path) -> None:
    from judge.report import ReportError, write_report

    try:
        typer.echo(f"report:     {write_report(run_dir)}")
    except ReportError as exc:
        _fail(f"report: {exc}", EXIT_USAGE)


def gate_command(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="A finished run folder (with results.jsonl).")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The gate policy, YAML (see examples/gate.yaml).")],
    junit: Annotated[Path | None, typer.Option(
        "--junit", help="JUnit XML for CI (default: RESULTS/gate-junit.xml).")] = None,
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="Markdown summary for a PR comment (default: RESULTS/gate.md).")] = None,
) -> None:
    """Check a finished run against a release policy. Exit 0 when every threshold passes, 1 when any
    fails (a threshold that cannot be measured fails), 2 for bad usage."""
    from judge.atomic import ensure_private_dir, write_text_atomic
    from judge.gate import GateError, format_check, junit_xml, load_policy, markdown_summary, run_gate
    from judge.runner import RESULTS_FILE

    if not (results / RESULTS_FILE).is_file():
        _fail(f"{results} is not a run folder: it has no {RESULTS_FILE} (score a file into it first: "
              f"psyjudge score FILE -r RUBRIC --out {results})", EXIT_USAGE)
    try:
        outcome = run_gate(results, load_policy(policy))
    except GateError as exc:
        _fail(str(exc), EXIT_USAGE)
    junit_path = junit or results / "gate-junit.xml"
    markdown_path = markdown or results / "gate.md"
    for path, text in ((junit_path, junit_xml(outcome)), (markdown_path, markdown_summary(outcome))):
        ensure_private_dir(path.parent)
        write_text_atomic(path, text)
    for check in outcome.checks:
        typer.secho(format_check(check), fg=None if check.passed else typer.colors.RED)
    failed = outcome.failed
    typer.echo(f"gate: PASS ({len(outcome.checks)} threshold(s) met)" if outcome.passed
               else f"gate: FAIL ({len(failed)} of {len(outcome.checks)} threshold(s) failed)")
    typer.echo(f"junit:      {junit_path}\nmarkdown:   {markdown_path}")
    raise typer.Exit(EXIT_OK if outcome.passed else EXIT_FAILED)
