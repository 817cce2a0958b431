"""`psyjudge programs ...` and `psyjudge rules ...`: write, re-validate and list judging programs;
explain what the rules tier finds in a text and measure it against labelled data. Options are parsed
here; the work lives in judge.programs, judge.tiers.rules and judge.metrics.

Exit codes: 0 ok; 1 a program not kept or failing re-validation; 2 bad usage; 3 unreadable input.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from judge.datasets import Case
    from judge.programs.synthesis import Synthesised
    from judge.rubrics import Rubric

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3

programs_app = typer.Typer(no_args_is_help=True, help="Judging programs (PAJAMA-style): synthesize with an LLM, "
                           "re-validate, list.")
rules_app = typer.Typer(no_args_is_help=True, help="The rules tier: explain its findings on a text, measure it "
                        "against labelled data.")

RubricOpt = Annotated[str, typer.Option("--rubric", "-r", help="Rubric id (or id@version).")]
DatasetOpt = Annotated[list[Path] | None, typer.Option(
    "--dataset", "-d", help="Labelled JSONL (datasets/<rubric>/examples.jsonl); repeatable.")]
RubricsDirOpt = Annotated[list[Path] | None, typer.Option(
    "--rubrics-dir", help="Extra folder of rubrics, searched before the built-in ones; repeatable.")]


# judge.cli mounts these apps, so its shared helpers are imported late, inside the functions.
def _rubric(ref: str, dirs: list[Path] | None) -> Rubric:
    from judge.cli_common import _rubric as load

    return load(ref, dirs)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    from judge.cli_common import _fail as fail

    fail(message, code)


def _cases(rubric: Rubric, datasets: list[Path] | None) -> list[Case]:
    from judge.datasets import DatasetError, labelled_cases, read_labelled

    cases: list[Case] = []
    for path in datasets or []:
        try:
            rows = [r for r in read_labelled(path) if r.rubric == rubric.id]
        except OSError as exc:
            _fail(f"--dataset: {exc}", EXIT_INPUT)
        except DatasetError as exc:
            _fail(f"--dataset: {exc}", EXIT_USAGE)
        cases.extend(labelled_cases(rows, str(path)))
    return cases


def _pct(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


@programs_app.command("synthesize")
def synthesize(
    rubric_ref: RubricOpt,
    dataset: DatasetOpt = None,
    question: Annotated[list[str] | None, typer.Option(
        "--question", "-q", help="Only these sub-questions (default: all); repeatable.")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Agreement a program must reach on the "
                                             "rows it answers (held-out labelled rows when there are 10+).")] = 0.85,
    min_coverage: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of rows it must answer.")] = 0.2,
    judge: Annotated[str | None, typer.Option(
        "--judge", "-j", help="The LLM that writes programs: a litellm model string, a .gguf path, or "
        "nothing for the embedded local model.")] = None,
    api_base: Annotated[str | None, typer.Option("--api-base")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    rubrics_dir: RubricsDirOpt = None,
) -> None:
    """Ask the LLM for one judging program per sub-question, validate each against the rubric's
    examples and the --dataset rows, and save the ones above the threshold beside the rubric."""
    from judge.cli_common import _judge, _judge_options
    from judge.models import JudgeModel
    from judge.programs.store import judged
    from judge.programs.synthesis import synthesize as run

    rubric = _rubric(rubric_ref, rubrics_dir)
    cases = _cases(rubric, dataset)
    options = _judge_options(api_base, api_key, 1, 4, 300.0, None, no_cache)
    options["max_tokens"] = 1500

    def show(outcome: Synthesised) -> None:
        last = next((a for a in reversed(outcome.attempts) if a.measured is not None), None)
        measured = judged(last.measured, last.held_out) if last and last.measured else None
        figures = (f"agreement {_pct(measured.agreement)} coverage {measured.coverage:.2f} on {measured.rows} rows"
                   if measured else "")
        mark = "kept" if outcome.kept else "NOT KEPT"
        typer.echo(f"  {mark:<8} {outcome.question:<34} {figures}")
        if not outcome.kept:
            typer.echo(f"           {outcome.reason[:300]}")

    with _judge(judge, options, [rubric]) as (config, description):
        if config.compact_answers:  # the local judge's settings are for grading, not for writing code
            config = config.model_copy(update={"compact_answers": False, "max_tokens": 1500})
        typer.echo(f"{rubric.key}: programs written by {description}; validated on {len(rubric.spec.examples)} "
                   f"examples and {len(cases)} labelled rows")
        try:
            results = asyncio.run(run(rubric, JudgeModel(config), cases, questions=question, threshold=threshold,
                                      min_coverage=min_coverage, progress=show))
        except ValueError as exc:
            _fail(str(exc))
    kept = sum(r.kept for r in results)
    typer.echo(f"{kept}/{len(results)} programs kept in {rubric.folder / 'programs'}")
    raise typer.Exit(EXIT_OK if kept == len(results) else EXIT_FAILED)


@programs_app.command("test")
def test(
    rubric_ref: Annotated[list[str] | None, typer.Option("--rubric", "-r", help="Rubrics to test (default: every "
                                                         "rubric with programs); repeatable.")] = None,
    dataset: DatasetOpt = None,
    accept: Annotated[bool, typer.Option(help="Record the new sha256 and figures of programs that pass (after a "
                                         "reviewer's edit).")] = False,
    rubrics_dir: RubricsDirOpt = None,
) -> None:
    """Re-validate saved programs: the sandbox rules, the file hash, and agreement at or above the
    threshold each was kept at. Exit 1 if any fails."""
    from judge.programs.revalidate import revalidate
    from judge.rubrics import available_rubrics

    refs = rubric_ref or sorted(available_rubrics(rubrics_dir or []))
    failed = tested = 0
    for ref in refs:
        rubric = _rubric(ref, rubrics_dir)
        cases = _cases(rubric, dataset)
        for check in revalidate(rubric, cases, accept=accept):
            tested += 1
            failed += not check.ok
            typer.echo(f"  {'ok  ' if check.ok else 'FAIL'} {rubric.id}/{check.question:<32} {check.detail}")
    typer.echo(f"{tested - failed}/{tested} programs pass")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@programs_app.command("list")
def list_programs(rubrics_dir: RubricsDirOpt = None) -> None:
    """Every saved program: rubric, question, model, date, agreement and precision class."""
    from judge.programs.store import programs_dir, read_manifest
    from judge.rubrics import available_rubrics

    for ref in sorted(available_rubrics(rubrics_dir or [])):
        rubric = _rubric(ref, rubrics_dir)
        manifest = read_manifest(programs_dir(rubric.folder))
        for e in manifest.programs if manifest else []:
            typer.echo(f"{rubric.id:<24} {e.question:<32} {e.model:<28} {e.created} agreement "
                       f"{_pct(e.measured.agreement)} coverage {e.measured.coverage:.2f} {e.precision}")


@rules_app.command("explain")
def explain(
    rubric_ref: RubricOpt,
    response: Annotated[str, typer.Argument(help="The chatbot response to check.")],
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="A user turn before it; repeatable.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The user's region (ISO code).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    rubrics_dir: RubricsDirOpt = None,
) -> None:
    """Run the rules tier on one response and show every answer with its evidence span."""
    from judge.normalize import normalize
    from judge.schema import Record, RecordMeta, Turn
    from judge.tiers.rules import judge_with_rules

    rubric = _rubric(rubric_ref, rubrics_dir)
    if not response.strip():
        _fail("the response is empty")
    record = Record(id="explain", turns=[Turn(role="user", content=u) for u in user or []], response=response,
                    meta=RecordMeta(region=region))
    result = judge_with_rules(record, rubric)
    view = normalize(response)
    if as_json:
        typer.echo(json.dumps({"result": result.model_dump(mode="json"), "normalized": view.text,
                               "undone": sorted(view.undone)}, indent=2))
        return
    typer.echo(f"{rubric.key} rules tier: label {result.label or 'abstain'}"
               f"{f' ({result.fired_rule})' if result.fired_rule else ''}; fallback {result.fallback_label} "
               f"({result.fallback_rule})")
    if view.undone:
        typer.echo(f"de-obfuscated ({', '.join(sorted(view.undone))}): {view.text[:300]}")
    for a in result.answers:
        where = f" {a.where}[{a.span[0]}:{a.span[1]}]" if a.span else ""
        typer.echo(f"  {a.question_id:<34} {a.value.value:<4} {a.confidence:.2f}{where} {a.evidence[:80]!r}  "
                   f"<- {a.rationale}")
    unanswered = [q for q in rubric.question_ids if q not in {a.question_id for a in result.answers}]
    if unanswered:
        typer.echo(f"  abstained on: {', '.join(unanswered)}")


@rules_app.command("eval")
def evaluate(
    rubric_ref: RubricOpt,
    dataset: Annotated[list[Path], typer.Option("--dataset", "-d", help="Labelled JSONL; repeatable.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    rubrics_dir: RubricsDirOpt = None,
) -> None:
    """Precision and recall of the rules tier's answers per sub-question, and of its own label
    decisions, against the gold answers of labelled data."""
    from judge.tiers.rules import evaluate_rules

    rubric = _rubric(rubric_ref, rubrics_dir)
    report = evaluate_rules(rubric, _cases(rubric, dataset))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{rubric.key}: {report['rows']} rows; rules decided {report['decided']} "
               f"(correct {report['decided_correct']}); fallback label agreement {_pct(report['fallback_agreement'])}")
    typer.echo(f"  {'question':<34} {'gold y/n':>9} {'cov':>5} {'P(yes)':>6} {'R(yes)':>6} {'P(no)':>6} {'R(no)':>6}")
    for q in report["questions"]:
        typer.echo(f"  {q['question']:<34} {q['gold_yes']:>4}/{q['gold_no']:<4} {q['coverage']:5.2f} "
                   f"{_pct(q['precision_yes'])}  {_pct(q['recall_yes'])}  {_pct(q['precision_no'])}  "
                   f"{_pct(q['recall_no'])}")
