"""The `psyjudge compare` command: what changed between two target runs (judge.compare does the work).

Exit codes: 0 the comparison was written (whatever it shows: compare reports, `psyjudge gate` decides);
2 a folder is not a target run (no readable release.json); 3 a file cannot be read or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from judge.cli_common import EXIT_INPUT, EXIT_USAGE, _fail


def compare(
    run_a: Annotated[Path, typer.Argument(
        help="The baseline: a folder that `psyjudge run --target` wrote.", show_default=False)],
    run_b: Annotated[Path, typer.Argument(
        help="The candidate, run on the same suites.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder for compare.json, compare.md and compare.html. Default: "
        "RUN_B/compare-<name of RUN_A>.")] = None,
) -> None:
    """Compare two candidates run on the same suites: harm rate, over-refusal and over-refusal with
    partial refusals per category, B - A with a 95% interval (flagged worse or better when it excludes
    0), the cases whose label or refusal flipped (worst first), and the cases one run played alone.
    Prints the table and the number of flips; exits 0 whatever they show."""
    from judge.compare import compare_runs, default_out, flips_line, summary_table, write_comparison
    from judge.release_report import ReleaseError

    try:
        comparison = compare_runs(run_a, run_b)
    except ReleaseError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"{exc.filename or run_a}: {exc.strerror or exc}", EXIT_INPUT)
    target = out if out is not None else default_out(run_a, run_b)
    try:
        paths = write_comparison(comparison, target)
    except OSError as exc:
        _fail(f"{exc.filename or target}: {exc.strerror or exc}", EXIT_INPUT)
    for note in comparison.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    typer.echo(summary_table(comparison))
    typer.echo("")
    typer.echo(flips_line(comparison))
    typer.echo(f"wrote {paths['json']}, {paths['markdown'].name}, {paths['html'].name}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
    app.command("compare")(compare)
