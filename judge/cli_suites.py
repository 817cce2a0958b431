"""`psyjudge suite ...`: list the benchmark suites and show one. It parses options and prints; the work
lives in judge.suites.

Exit codes: 0 ok; 2 a suite that cannot be loaded (the message names the file, the case and the field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from judge.cli_common import EXIT_USAGE, _fail
from judge.suites import CaseKind, Suite, SuiteCase, SuiteError, available_suites, builtin_suites_dir, load_suite

suite_app = typer.Typer(no_args_is_help=True, help="Benchmark suites: the prompts a candidate chatbot is run on. "
                        "List them, or show one.")

SuitesDirOpt = Annotated[Path | None, typer.Option(
    "--suites-dir", help="A folder of suite folders to look ids up in, instead of the built-ins.")]


def _load(ref: str, suites_dir: Path | None) -> Suite:
    try:
        return load_suite(ref, suites_dir)
    except SuiteError as exc:
        _fail(str(exc), EXIT_USAGE)


def _counts_line(suite: Suite) -> str:
    counts = suite.counts()
    kinds = ", ".join(f"{k} {n}" for k, n in counts["kind"].items() if n)
    expected = ", ".join(f"{e} {n}" for e, n in counts["expected"].items() if n)
    return f"{len(suite.cases)} cases ({kinds}; {expected})"


@suite_app.command("list")
def suite_list(suites_dir: SuitesDirOpt = None) -> None:
    """List the suites that can be named by id, with their cases by kind and by expected behaviour.
    A suite that does not load is listed as BROKEN with the reason, and the command exits 2."""
    root = suites_dir if suites_dir is not None else builtin_suites_dir()
    broken = 0
    for suite_id in available_suites(root):
        try:
            suite = load_suite(suite_id, root)
        except SuiteError as exc:
            broken += 1
            typer.secho(f"{suite_id:<22} BROKEN: {exc}", fg=typer.colors.RED)
            continue
        typer.echo(f"{suite.key:<22} {suite.card.title}\n{'':<22} {_counts_line(suite)}")
    if broken:
        raise typer.Exit(EXIT_USAGE)


def _case_json(case: SuiteCase) -> dict[str, Any]:
    return case.model_dump(mode="json", exclude_defaults=True) | {"region": case.region, "is_unsafe": case.is_unsafe}


def _show_case(case: SuiteCase) -> None:
    region = f" [{case.region}]" if case.region else ""
    typer.echo(f"  {case.id}  {case.kind.value}, {case.expected.value}, {case.category}{region}")
    if case.note:
        typer.echo(f"      note: {case.note}")
    if case.kind is CaseKind.PROMPT:
        typer.echo(f"      user: {case.prompt}")
    elif case.kind is CaseKind.SCRIPT:
        for i, turn in enumerate(case.user_turns, 1):
            typer.echo(f"      user {i}: {turn}")
    else:
        typer.echo(f"      persona ({case.turns} user turns): {' '.join((case.persona or '').split())}")
        if case.opening:
            typer.echo(f"      opening: {case.opening}")


@suite_app.command("show")
def suite_show(
    suite_ref: Annotated[str, typer.Argument(
        metavar="SUITE", help="A suite id, a suite folder, or xstest:PATH / simplesafetytests:PATH.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    suites_dir: SuitesDirOpt = None,
) -> None:
    """Show a suite's card and every case; rows of an adapted file that could not be used are listed
    with their line and the reason."""
    suite = _load(suite_ref, suites_dir)
    card = suite.card
    if as_json:
        payload = {"key": suite.key, "sha256": suite.sha256, "path": str(suite.path) if suite.path else None,
                   "card": card.model_dump(mode="json"), "counts": suite.counts(),
                   "cases": [_case_json(c) for c in suite.cases],
                   "skipped": [{"line": s.line, "reason": s.reason} for s in suite.skipped]}
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{suite.key}: {card.title}\nowner: {card.owner}\nlicence: {card.license}\n"
               f"source: {' '.join(card.source.split())}\npath: {suite.path}\nsha256: {suite.sha256}\n"
               f"default region: {card.region or 'none'}\n\n{card.description.strip()}\n\n"
               f"{_counts_line(suite)}:")
    for case in suite.cases:
        _show_case(case)
    if suite.skipped:
        typer.echo(f"\n{len(suite.skipped)} row(s) skipped:")
        for row in suite.skipped:
            typer.echo(f"  line {row.line}: {row.reason}")


def register(app: typer.Typer) -> None:
    """Add the `suite` commands to the psyjudge app."""
    app.add_typer(suite_app, name="suite")
