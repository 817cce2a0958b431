"""The `psyjudge studio` command: start the rubric studio on this machine and print its address."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from judge.cli_common import (
    EXIT_USAGE,
    ApiBaseOpt,
    ApiKeyOpt,
    CacheDirOpt,
    JudgeOpt,
    NoCacheOpt,
    _fail,
    _judge,
    _judge_options,
    bind_socket,
)
from judge.privacy import is_loopback_host

if TYPE_CHECKING:
    from judge.studio.app import StudioSettings

TOKEN_ENV = "PSYJUDGE_STUDIO_TOKEN"


def _rubrics_root(rubrics: Path, copy_builtins: bool) -> Path:
    from judge.rubrics import RUBRIC_FILE, builtin_rubrics_dir

    if copy_builtins:
        if rubrics.exists() and any(rubrics.iterdir()):
            _fail(f"--copy-builtins: {rubrics} is not empty; copy into a new folder", EXIT_USAGE)
        shutil.copytree(builtin_rubrics_dir(), rubrics, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        typer.echo(f"copied the built-in rubrics to {rubrics}")
    if not rubrics.is_dir() or not any((c / RUBRIC_FILE).is_file() for c in rubrics.iterdir() if c.is_dir()):
        _fail(f"--rubrics: no rubric folders in {rubrics} (a rubric folder holds a rubric.yaml). Pass the folder "
              "that holds them, or add --copy-builtins to start a new folder from the built-in rubrics", EXIT_USAGE)
    return rubrics.resolve()


def _tiers(tiers: str | None, judge: str | None) -> list[str]:
    if tiers is None:
        chosen = ["rules"]
        from judge.judges import _classifier_check

        if _classifier_check().ok:
            chosen.append("classifier")
        if judge is not None:
            chosen.append("llm")
        return chosen
    names = [t.strip() for t in tiers.split(",") if t.strip()]
    order = ("rules", "classifier", "llm")
    unknown = [n for n in names if n not in order]
    if unknown or not names:
        _fail(f"--tiers: expected a comma-separated list of rules, classifier, llm; got {tiers!r}", EXIT_USAGE)
    if "llm" in names and judge is None:
        _fail("--tiers names llm but no --judge is given", EXIT_USAGE)
    return [n for n in order if n in names]


@contextlib.contextmanager
def studio_settings(rubrics: Path, data: Path | None, tier_names: list[str], judge: str | None,
                    options: dict[str, object], token: str | None, loopback: bool) -> Iterator[StudioSettings]:
    """The studio's store and test runner, with the judge (a local server, if chosen) running meanwhile."""
    from judge.cascade import CascadeConfig
    from judge.models import JudgeConfig
    from judge.runner import build_cascade
    from judge.studio.app import StudioSettings
    from judge.studio.store import RubricStore
    from judge.studio.testrun import CaseRunner

    plan = CascadeConfig.model_validate({"tiers": tier_names})
    store = RubricStore(rubrics)
    with contextlib.ExitStack() as stack:
        if "llm" in tier_names:
            config, description = stack.enter_context(_judge(judge, dict(options), []))
        else:
            config, description = JudgeConfig(model="none"), "none"
        cascade, _ = build_cascade(config, plan)
        runner = CaseRunner(cascade, tier_names, data, concurrency=config.concurrency)
        yield StudioSettings(store=store, runner=runner, token=token, loopback=loopback,
                             judge_description=description)


def studio(
    rubrics: Annotated[Path, typer.Option("--rubrics", help="The folder of rubric folders to edit.")] = Path("rubrics"),
    data: Annotated[Path | None, typer.Option(
        "--data", help="A labelled file (datasets/<rubric>/examples.jsonl) or a chat log whose rows the test run "
        "can score too.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback lets other "
                                      "machines reach the studio: a token is then required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8765,
    token: Annotated[str | None, typer.Option(
        "--token", envvar=TOKEN_ENV, show_default=False,
        help="Require this access token (for a shared machine); 'auto' makes one up.")] = None,
    copy_builtins: Annotated[bool, typer.Option(
        "--copy-builtins", help="Start --rubrics (a new or empty folder) as a copy of the built-in rubrics.")] = False,
    tiers: Annotated[str | None, typer.Option(
        "--tiers", help="Tiers the test run uses (default: rules, the classifier when it is installed, and the "
        "LLM judge when --judge is given).")] = None,
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Start the rubric studio: edit a rubric's questions, word lists, rule and examples in the browser,
    see what a change does to the examples before saving, and save it as a new version with a note."""
    import uvicorn

    from judge.studio.app import create_app

    if data is not None and not data.is_file():
        _fail(f"--data: no such file: {data}", EXIT_USAGE)
    root = _rubrics_root(rubrics, copy_builtins)
    loopback = is_loopback_host(host)
    if token == "auto" or (token is None and not loopback):
        token = secrets.token_urlsafe(18)
    if not loopback:
        typer.secho(f"warning: listening on {host}, not on loopback: other machines can reach the studio and "
                    "change rubrics. Anyone with the address below (it holds the access token) can edit.",
                    err=True, fg=typer.colors.YELLOW)
    tier_names = _tiers(tiers, judge)
    options = _judge_options(api_base, api_key, 4, 4, 120.0, cache_dir, no_cache)
    sock = bind_socket(host, port)
    bound_host, bound = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    with studio_settings(root, data, tier_names, judge, options, token, loopback) as settings:
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        typer.echo(f"psyjudge studio: editing {root}; test runs use {', '.join(tier_names)}\n"
                   f"open {url}\n(Ctrl+C stops it)")
        server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", access_log=False))
        server.run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command()(studio)
