"""The `psyjudge report` command: the HTML report of a run folder (judge.report does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from judge.cli_common import EXIT_INPUT, EXIT_USAGE, _fail


def report(
    results: Annotated[Path, typer.Argument(
        help="The run folder that `psyjudge score --out` wrote (or its results.jsonl).", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the page (a file, or a folder for report.html). Default: "
        "RESULTS/report.html.")] = None,
    probes: Annotated[Path | None, typer.Option(
        "--probes", help="A probes.json from `psyjudge probe` (default: the run folder's, when it has one).")] = None,
    category_column: Annotated[str, typer.Option(
        "--category-column", help="The input column (meta.extra) to break labels down by.")] = "category",
    title: Annotated[str | None, typer.Option("--title", help="The page title (default: from the run folder).")] = None,
    redact: Annotated[bool, typer.Option(
        "--redact", help="Replace personal data in the responses and quotes shown (names, emails, phone numbers, "
        "addresses, dates of birth, identifiers, personal URLs, card numbers) with placeholders, so the page can "
        "be shared; crisis-line numbers are kept. The page says it is redacted.")] = False,
) -> None:
    """Write one self-contained HTML page about a run: labels per rubric and category, agreement with
    gold labels (eval.json), what each tier decided and cost, sub-question hit rates, the worst
    offenders with their evidence highlighted, and bias-probe flip rates (probes.json). It opens
    offline: no script, and nothing is fetched. The file is owner-only (0600). Prints the page's path."""
    from judge.report import ReportError, write_report  # matplotlib and jinja2 only when reporting

    try:
        path = write_report(results, out, probes=probes, category_column=category_column, title=title,
                            redact=redact)
    except ReportError as exc:
        _fail(str(exc), EXIT_USAGE)
    except ImportError as exc:  # --redact needs judge.redact and the library under it
        _fail(f"--redact: the redactor cannot be loaded ({exc})", EXIT_USAGE)
    except OSError as exc:
        _fail(f"{exc.filename or results}: {exc.strerror or exc}", EXIT_INPUT)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
    app.command("report")(report)
