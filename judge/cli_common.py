"""What the psyjudge commands share: exit codes, the error exit, and the options that choose rubrics,
the judge and the cascade, so that score, eval and probe take them the same way.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from pydantic import SecretStr, ValidationError

from judge.ingest import ColumnMap
from judge.judges import JudgeSelectionError, choose_judge, open_judge
from judge.local_judge import LocalJudgeError
from judge.models import API_BASE_ENV, API_KEY_ENV, JudgeConfig
from judge.privacy import LocalOnlyError
from judge.rubrics import Rubric, RubricError, load_rubric

if TYPE_CHECKING:
    from judge.cascade import CascadeConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3

RubricsDir = Annotated[list[Path] | None, typer.Option(
    "--rubrics-dir", help="Extra folder of rubric folders, searched before the built-ins.")]


def _check_classifier(model: str | None, runtime: Literal["torch", "onnx", "onnx-int8"]) -> None:
    """Fail before the run, not on every record, when the classifier tier cannot load."""
    from judge.classifier.backends import ClassifierUnavailable
    from judge.classifier.bundle import BundleError
    from judge.classifier.model import check_loadable

    try:
        check_loadable(Path(model) if model else None, runtime)
    except (ClassifierUnavailable, BundleError) as exc:
        _fail(f"classifier tier: {exc} (or leave the tier out: --tiers rules,llm)", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for a served command (studio, serve), bound here so that a busy port is a usage
    error before anything starts, and so that --port 0 can say which port it got. It listens before
    the address is printed: a client that connects at once is queued, not refused."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        _fail(f"--host {host} --port {port}: cannot listen: {exc.strerror or exc}", EXIT_USAGE)
    sock.set_inheritable(True)
    return sock


def _rubric(ref: str, dirs: list[Path] | None) -> Rubric:
    try:
        return load_rubric(ref, dirs or [])
    except RubricError as exc:
        _fail(str(exc), EXIT_USAGE)


def _judge_options(api_base: str | None, api_key: str | None, concurrency: int, max_attempts: int,
                   timeout: float, cache_dir: Path | None, no_cache: bool, *, samples: int = 1,
                   sample_temperature: float | None = None, review_below: float | None = None,
                   local_only: bool = False, redact: bool | None = None, keep_pii: bool = False) -> dict[str, Any]:
    """The JudgeConfig fields the options give. The sampling options are checked here, against
    JudgeConfig's own bounds, so that a bad value is a usage error naming the option even on a run
    that starts no judge. `redact` None means automatic: judge.judges.open_judge decides it once the
    judge's endpoint is known."""
    sampling: dict[str, Any] = {"samples": samples}
    if sample_temperature is not None:
        sampling["sample_temperature"] = sample_temperature
    if review_below is not None:
        sampling["review_below"] = review_below
    try:
        JudgeConfig.model_validate({"model": "options", **sampling})
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", EXIT_USAGE)
    return {"api_base": api_base, "api_key": SecretStr(api_key) if api_key else None, "concurrency": concurrency,
            "max_attempts": max_attempts, "timeout_s": timeout, "cache_dir": cache_dir, "use_cache": not no_cache,
            "local_only": local_only, "redact": redact, "keep_pii": keep_pii, **sampling}


def check_local_only(endpoints: list[tuple[str, str, str | None]]) -> None:
    """Under --local-only: a usage error (exit 2) naming the first model that is not on loopback,
    before anything is read or started."""
    from judge.privacy import LocalOnlyError
    from judge.privacy import check_local_only as check

    try:
        check(endpoints)
    except LocalOnlyError as exc:
        _fail(str(exc), EXIT_USAGE)


@contextlib.contextmanager
def _judge(judge: str | None, options: dict[str, Any], rubrics: list[Rubric]) -> Iterator[tuple[JudgeConfig, str]]:
    """The chosen judge's config, with a local server running while the block runs. Every way a
    judge cannot be had is a usage error (exit 2) with the reason and the fix."""
    from judge.tiers.llm import prompt_chars

    try:
        choice = choose_judge(judge)
        with open_judge(choice, prompt_chars(rubrics), **options) as config:
            yield config, choice.description
    except (JudgeSelectionError, LocalJudgeError, LocalOnlyError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", EXIT_USAGE)


JudgeOpt = Annotated[str | None, typer.Option(
    "--judge", "-j", help="A litellm model string, 'local' for the embedded judge, or a .gguf path. Default: "
    "the embedded judge when no provider key is set and psyjudge[local] is installed.")]
ApiBaseOpt = Annotated[str | None, typer.Option("--api-base", envvar=API_BASE_ENV,
                                                help="Base URL of an OpenAI-compatible server.")]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar=API_KEY_ENV, show_default=False,
                                               help="API key; otherwise the provider's own variable.")]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", "-c", min=1, max=1024,
                                             help="Judge calls in flight per provider.")]
AttemptsOpt = Annotated[int, typer.Option("--max-attempts", min=1, max=20,
                                          help="Tries per call on 429 / 5xx / timeouts.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds per judge call.")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Judge reply cache (0700).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the reply cache.")]
SamplesOpt = Annotated[int, typer.Option(
    "--samples", min=1, max=25, help="Ask the LLM judge this many times per record at --sample-temperature; the "
    "label is the majority (a tie goes to the more severe label) and each verdict records the agreement. "
    "Costs N times the LLM calls for the records the LLM judges; the cheaper tiers are unaffected.")]
SampleTemperatureOpt = Annotated[float | None, typer.Option(
    "--sample-temperature", min=0.0, max=2.0, show_default="0.7",
    help="Temperature of each sample when --samples > 1 (above 0).")]
ReviewBelowOpt = Annotated[float | None, typer.Option(
    "--review-below", min=0.0, max=1.0, show_default="0.75",
    help="Flag a sampled verdict for human review when its agreement is under this (or its labels tie).")]
LocalOnlyOpt = Annotated[bool, typer.Option(
    "--local-only", help="Refuse to start unless every model (judge, target, simulator) is on this machine "
    "(127.0.0.1, ::1, localhost), and refuse any call that would leave it. The embedded judge qualifies.")]
RedactOpt = Annotated[bool | None, typer.Option(
    "--redact/--no-redact", show_default=False, help="Replace names, emails, phone numbers, addresses, dates of "
    "birth, ID and card numbers, and personal URLs with placeholders such as [EMAIL_1] in the text sent to a "
    "model (crisis-line numbers are kept). Default: on for a remote model, off for one on this machine.")]
KeepPiiOpt = Annotated[bool, typer.Option(
    "--keep-pii", help="With redaction on, store each request's placeholder -> original mapping in results.jsonl "
    "(it is personal data: off by default, when the mapping lives only in memory).")]
ColumnOpt = Annotated[list[str] | None, typer.Option(
    "--column", help="Map a field to an input column, e.g. --column response=answer.")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="jsonl, csv or parquet.")]
ProgressOpt = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="Progress bar (default: on a terminal).")]


def input_columns(column: list[str] | None, input_format: str | None = None) -> ColumnMap:
    """The --column mapping, with --format checked too: a usage error naming the option at fault."""
    if input_format is not None and input_format not in ("jsonl", "csv", "parquet"):
        _fail(f"--format: expected jsonl, csv or parquet, got {input_format!r}", EXIT_USAGE)
    try:
        return ColumnMap.from_pairs(column or [])
    except ValueError as exc:
        _fail(f"--column: {exc}", EXIT_USAGE)


@contextlib.contextmanager
def _no_judge(options: dict[str, Any]) -> Iterator[tuple[JudgeConfig, str]]:
    """For a rules-only run: no model is started or called."""
    kept = {k: v for k, v in options.items() if k not in ("api_base", "api_key", "redact")}
    yield JudgeConfig(model="none", redact=bool(options.get("redact")), **kept), "none (rules tier only)"


# --- the cascade ----------------------------------------------------------------------------------

TiersOpt = Annotated[str | None, typer.Option(
    "--tiers", help="Tiers to run, cheapest first, comma-separated, from rules, classifier, llm (default: "
    "rules,llm, or rules,classifier,llm when --classifier-model is given). Without llm no judge model is "
    "used; a record no tier decides gets the most severe fallback label, marked degraded.")]
ModeOpt = Annotated[str, typer.Option(
    "--mode", help="cascade: cheapest first, the LLM only when the cheaper tiers are unsure. all: every tier on "
    "every record, the LLM's label kept, to compare the tiers. rules, classifier or llm: that tier alone.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="When a tier fails (the judge after its retries), leave the record ERROR instead of "
    "falling back, degraded, to a cheaper tier's answer.")]
RulesThresholdOpt = Annotated[float, typer.Option(
    "--rules-threshold", min=0.0, max=1.0, help="Confidence the rules tier needs to decide without the judge.")]
NoProgramsOpt = Annotated[bool, typer.Option("--no-programs", help="Do not run the rubrics' saved judging "
                                             "programs in the rules tier.")]
ClassifierModelOpt = Annotated[Path | None, typer.Option(
    "--classifier-model", help="The classifier tier's model folder (default: the shipped head; "
    "see `psyjudge classifier info`).")]
ClassifierRuntimeOpt = Annotated[str, typer.Option(
    "--classifier-runtime", help="torch, onnx or onnx-int8 (after `psyjudge classifier export-onnx`).")]

MODES = ("cascade", "all", "rules", "classifier", "llm")


def build_plan(tiers: str | None, mode: str, strict: bool, rules_threshold: float, no_programs: bool,
               classifier_model: Path | None, classifier_runtime: str) -> CascadeConfig:
    """The cascade the options describe, or a usage error naming the option at fault."""
    from judge.cascade import CascadeConfig

    if mode not in MODES:
        _fail(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}", EXIT_USAGE)
    if tiers is None:
        if mode in ("rules", "classifier", "llm"):
            tiers = mode
        else:
            tiers = "rules,classifier,llm" if classifier_model is not None else "rules,llm"
    names = [t.strip() for t in tiers.split(",") if t.strip()]
    try:
        thresholds = {"rules": rules_threshold} if "rules" in names else {}
        plan = CascadeConfig.model_validate({
            "tiers": names, "mode": mode, "strict": strict, "thresholds": thresholds, "programs": not no_programs,
            "classifier_model": str(classifier_model) if classifier_model else None,
            "classifier_runtime": classifier_runtime})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "--classifier-runtime" if first["loc"] and first["loc"][0] == "classifier_runtime" else "--tiers"
        _fail(f"{where}: {first['msg']} (tiers: a comma-separated list of rules, classifier, llm)", EXIT_USAGE)
    if "classifier" in plan.tiers:
        _check_classifier(plan.classifier_model, plan.classifier_runtime)
    elif classifier_model is not None:
        _fail("--classifier-model names a model but --tiers leaves the classifier out", EXIT_USAGE)
    return plan


def judging(plan: CascadeConfig, judge: str | None, options: dict[str, Any],
            rubrics: list[Rubric]) -> contextlib.AbstractContextManager[tuple[JudgeConfig, str]]:
    """The judge a plan needs: started (a local server) when it runs the LLM tier, none otherwise."""
    return _judge(judge, options, rubrics) if plan.uses_llm else _no_judge(options)
