"""`psyjudge resources ...`: list the crisis-resource registry, check the numbers in a response, lint a
registry folder. It parses options and prints; the work lives in judge.resources and judge.resource_check.

Exit codes: 0 ok; 1 `check` found only wrong-region or unlisted numbers; 2 bad input (an unknown region,
an empty text, a registry that does not load).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from judge.resource_check import CheckStatus, NumberCheck, check_numbers
from judge.resources import (
    RESOURCES_DIR,
    Population,
    Registry,
    ResourceError,
    load_registry,
    normalise_region,
    region_name,
    service_context,
)
from judge.rubrics import builtin_rubrics_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(no_args_is_help=True, help="List the crisis-resource registry, check the numbers a response "
                  "quotes, lint a registry folder.")

RegionOpt = Annotated[str | None, typer.Option("--region", "-r", help="The user's region: an ISO code (GB), a "
                                               "name (United Kingdom) or a locale tag (en-GB).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _registry(folder: Path | None = None) -> Registry:
    try:
        return load_registry(folder)
    except ResourceError as exc:
        _fail(str(exc))


def _region(region: str | None) -> str | None:
    """The normalised region; a region given but unrecognisable is a usage error, not 'unknown'."""
    code = normalise_region(region)
    if region is not None and region.strip() and code is None:
        _fail(f"unknown region {region!r}; expected an ISO 3166 code (GB), a country name or a locale tag (en-GB)")
    return code


def _summary(registry: Registry) -> str:
    return (f"(registry: {registry.entry_count} entries across {len(registry.regions)} regions, "
            f"oldest last_checked {registry.oldest_check})")


@app.command("list")
def list_(region: RegionOpt = None,
          population: Annotated[Population | None, typer.Option("--population", "-p",
                                                                help="Only services for this group.")] = None,
          as_json: JsonOpt = False) -> None:
    """List the registry: every region, or one, optionally only the services for one population."""
    registry = _registry()
    code = _region(region)
    codes = [code] if code else sorted(registry.regions)
    known = [c for c in codes if c in registry.regions]
    if as_json:
        payload = {
            "regions": [{"region": c, "name": registry.regions[c].name,
                         "emergency": [e.number for e in registry.regions[c].emergency],
                         "services": [service_context(s) | {"last_checked": str(s.last_checked),
                                                            "checked_how": s.checked_how.value, "url": s.url}
                                      for s in registry.regions[c].services
                                      if population is None or population in s.populations]}
                        for c in known],
            "global_guidance": [g.text for g in registry.global_guidance] if code and not known else [],
            "entries": registry.entry_count, "oldest_last_checked": str(registry.oldest_check),
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    if code and not known:
        typer.echo(f"region {code} ({region_name(code)}) has no registry entries; global guidance applies:")
        for g in registry.global_guidance:
            typer.echo(f"  - {g.text}")
    for c in known:
        res = registry.regions[c]
        typer.echo(f"{c}  {res.name}  (emergency: {', '.join(e.number for e in res.emergency)})")
        services = res.services if population is None else res.for_population(population)
        if not services:
            typer.echo(f"  (no {population} services listed)")
        for s in services:
            ctx = service_context(s)
            reach = "; ".join([*(f"call {x}" for x in ctx["call"]), *(f"text {x}" for x in ctx["text"]),
                               *([f"chat {s.chat_url}"] if s.chat_url else [])])
            typer.echo(f"  {s.id:<26} {s.name}")
            typer.echo(f"  {'':<26} for: {', '.join(ctx['populations'])} | {reach}")
            typer.echo(f"  {'':<26} hours: {s.hours or 'not confirmed'} | checked {s.last_checked} "
                       f"({s.checked_how.value}) | {s.url}")
    typer.echo(_summary(registry))


def _print_check(result: NumberCheck) -> None:
    if result.region is None:
        typer.echo("region: unknown; numbers are reported with the regions they belong to")
    elif not result.region_known:
        typer.echo(f"region: {result.region} has no registry entries; global guidance applies")
    else:
        typer.echo(f"region: {result.region}")
    for n in result.numbers:
        belongs = f" -> {', '.join(n.countries)}" if n.countries else ""
        ids = f" [{', '.join(n.entry_ids)}]" if n.entry_ids else ""
        keyword = f" (text {n.keyword})" if n.keyword else ""
        typer.echo(f"  {n.text!r}{keyword}: {n.status.value}{belongs}{ids}")
    typer.echo(f"status: {result.status.value}")


@app.command()
def check(text: Annotated[str, typer.Argument(help="The response text, or - to read it from stdin.")],
          region: RegionOpt = None, as_json: JsonOpt = False) -> None:
    """Find the phone numbers a response quotes and check each against the registry for the user's region."""
    body = sys.stdin.read() if text == "-" else text
    if not body.strip():
        _fail("the text is empty")
    result = check_numbers(body, _region(region), _registry())
    if as_json:
        payload = result.model_dump(mode="json")
        payload["wrong_region_numbers"] = [n.model_dump(mode="json") for n in result.wrong_region_numbers]
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        _print_check(result)
    if result.status in (CheckStatus.WRONG_REGION, CheckStatus.UNLISTED_ONLY):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def lint(folder: Annotated[Path | None, typer.Argument(help="A registry folder; default: the built-in one.")]
         = None,
         max_age_days: Annotated[int, typer.Option("--max-age-days", min=1,
                                                   help="Warn about entries last checked longer ago.")] = 365,
         ) -> None:
    """Load and check every file of a registry folder: fields, URLs, dates and every number."""
    path = folder or builtin_rubrics_dir() / RESOURCES_DIR
    registry = _registry(path)  # never the cached built-in load: lint reads the files as they are now
    for entry in registry.stale(max_age_days):
        typer.secho(f"warning: {entry.file}: {entry.id}: last checked {entry.last_checked}, more than "
                    f"{max_age_days} days ago", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"ok: {registry.folder} {_summary(registry)}")
