"""The `psyjudge run` command: play suites against a target chatbot, judge every answer, read every
refusal, and write the release figures (judge.release does the work).

Exit codes: 0 the run finished (whatever the rates: `psyjudge gate` decides a release); 2 bad usage
(unknown suite, no judge, a target that cannot be had); 3 a file cannot be read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import SecretStr, ValidationError

from judge.cli_common import (
    EXIT_INPUT,
    EXIT_USAGE,
    ApiBaseOpt,
    ApiKeyOpt,
    AttemptsOpt,
    CacheDirOpt,
    ClassifierModelOpt,
    ClassifierRuntimeOpt,
    ConcurrencyOpt,
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
    _judge_options,
    _rubric,
    build_plan,
    check_local_only,
    judging,
)
from judge.models import API_BASE_ENV, API_KEY_ENV, JudgeConfig

if TYPE_CHECKING:
    from judge.suites import Suite
    from judge.target import EndpointConfig

def _local_kind(spec: str) -> str | None:
    """'local' or 'gguf' for a model the embedded llama.cpp server runs; None for a litellm string."""
    if spec == "local":
        return "local"
    return "gguf" if spec.lower().endswith(".gguf") else None


def _endpoint(role: str, settings: dict[str, Any]) -> EndpointConfig:
    """The EndpointConfig of the settings; a `redact` of None (automatic) is decided here, where the
    endpoint is known: on for a remote model, off for one on loopback."""
    from judge.privacy import should_redact
    from judge.target import EndpointConfig

    api_base = settings.get("api_base") or os.environ.get(f"PSYJUDGE_{role.upper()}_API_BASE") or None
    settings = {**settings, "redact": should_redact(settings.get("redact"), settings["model"], api_base)}
    try:
        return EndpointConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"--{role}-{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", EXIT_USAGE)


@contextlib.contextmanager
def open_endpoint(spec: str, role: str, judge_config: JudgeConfig | None, judge_spec: str | None,
                  settings: dict[str, Any]) -> Iterator[EndpointConfig]:
    """The endpoint config of a target or simulator. A local model shares the judge's running server
    when the judge is the same local model (one llama.cpp process on the machine, not two); otherwise
    it gets a server of its own for the block's life."""
    from judge.judges import JudgeSelectionError, choose_judge
    from judge.local_judge import LocalJudgeError, MissingExtraError, local_server

    kind = _local_kind(spec)
    if kind is None:
        yield _endpoint(role, {**settings, "model": spec})
        return
    # One slot serves one request at a time; a CPU model can take minutes on a long conversation.
    local = {**settings, "api_key": None, "concurrency": 1, "timeout_s": max(settings.get("timeout_s", 0.0), 900.0),
             "max_tokens": min(settings.get("max_tokens", 512), 1024)}
    choice = choose_judge(judge_spec) if judge_config is not None else None
    if choice is not None and judge_config is not None and choice.kind == kind and (
            kind == "local" or (choice.gguf is not None
                                and choice.gguf.resolve() == Path(spec).expanduser().resolve())):
        yield _endpoint(role, {**local, "model": judge_config.model, "api_base": judge_config.api_base})
        return
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(local_server(Path(spec).expanduser() if kind == "gguf" else None,
                                                      prompt_chars=6000, max_tokens=local["max_tokens"]))
        except (JudgeSelectionError, LocalJudgeError, MissingExtraError) as exc:
            _fail(f"--{role} {spec}: {exc}", EXIT_USAGE)
        yield _endpoint(role, {**local, "model": server.model, "api_base": server.base_url})


def _suites(refs: list[str], dirs: list[Path] | None) -> list[Suite]:
    from judge.suites import SuiteError, load_suite

    suites = []
    for ref in refs:
        try:
            suites.append(load_suite(ref, dirs[0] if dirs else None))
        except SuiteError as exc:
            _fail(f"--suite {ref}: {exc}", EXIT_USAGE)
    ids = [s.card.id for s in suites]
    if len(set(ids)) < len(ids):
        _fail(f"--suite: a suite is named twice ({', '.join(ids)})", EXIT_USAGE)
    return suites


def _default_rubrics(suites: list[Suite], dirs: list[Path] | None) -> list[str]:
    """The rubrics the suites' cards name, in order; every built-in rubric when a card names none."""
    from judge.rubrics import available_rubrics

    named: list[str] = []
    for suite in suites:
        wanted = list(suite.card.rubrics)
        if not wanted:
            return sorted(available_rubrics(dirs or []))
        named += [r for r in wanted if r not in named]
    return named


def run(
    target: Annotated[str, typer.Option("--target", "-t", help="The chatbot under test: a litellm model string, "
                                        "'local' for the embedded model, or a .gguf path.", show_default=False)],
    suite: Annotated[list[str], typer.Option("--suite", "-s", help="A built-in suite id (psyjudge suite list), a "
                                             "suite folder, xstest:PATH or simplesafetytests:PATH; repeatable.",
                                             show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("reports/target-run"),
    system_prompt: Annotated[Path | None, typer.Option("--system-prompt", help="A file whose text is the "
                                                       "target's system prompt.")] = None,
    target_api_base: Annotated[str | None, typer.Option("--target-api-base", envvar="PSYJUDGE_TARGET_API_BASE",
                                                        help="Base URL of the target's OpenAI-compatible server.")]
    = None,
    target_api_key: Annotated[str | None, typer.Option("--target-api-key", envvar="PSYJUDGE_TARGET_API_KEY",
                                                       show_default=False, help="The target's API key; otherwise "
                                                       "the provider's own variable.")] = None,
    target_temperature: Annotated[float, typer.Option("--target-temperature", min=0.0, max=2.0)] = 0.0,
    target_max_tokens: Annotated[int, typer.Option("--target-max-tokens", min=16)] = 512,
    target_concurrency: Annotated[int, typer.Option("--target-concurrency", min=1, max=1024,
                                                    help="Target calls in flight (and cases played at once).")] = 8,
    simulator: Annotated[str | None, typer.Option("--simulator", help="The model that plays persona cases "
                                                  "(litellm string, 'local' or .gguf). Default: the judge model, "
                                                  "or the target when no LLM judge runs.")] = None,
    simulator_api_base: Annotated[str | None, typer.Option("--simulator-api-base",
                                                           envvar="PSYJUDGE_SIMULATOR_API_BASE")] = None,
    simulator_temperature: Annotated[float, typer.Option("--simulator-temperature", min=0.0, max=2.0)] = 0.7,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Play only N cases of each suite: single "
                                              "prompts first, then scripts, then personas, unsafe and safe in turn, in "
                                              "file order (a smoke run that still measures both rates).")] = None,
    refusal_threshold: Annotated[float, typer.Option("--refusal-threshold", min=0.0, max=1.0, help="Confidence "
                                                     "the programmatic refusal reading needs before the judge "
                                                     "model is asked instead.")] = 0.8,
    refusal_judge: Annotated[bool | None, typer.Option(
        "--refusal-judge/--no-refusal-judge", show_default=False, help="Ask the judge model about answers whose "
        "programmatic refusal reading is unsure. Default: on for a litellm judge; off for the embedded judge, which "
        "read those answers worse than the programmatic reading did (bench/results/refusal.md).")] = None,
    rubric: Annotated[list[str] | None, typer.Option("--rubric", "-r", help="Rubric id or folder; repeatable "
                                                     "(default: the rubrics the suite cards name).")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Replay cases the target failed on and "
                                               "rescore ERROR verdicts.")] = False,
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 8,
    max_attempts: AttemptsOpt = 4,
    timeout: TimeoutOpt = 120.0,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    progress: ProgressOpt = None,
    samples: SamplesOpt = 1,
    sample_temperature: SampleTemperatureOpt = None,
    review_below: ReviewBelowOpt = None,
    tiers: TiersOpt = None,
    mode: ModeOpt = "cascade",
    strict: StrictOpt = False,
    rules_threshold: RulesThresholdOpt = 0.9,
    no_programs: NoProgramsOpt = False,
    classifier_model: ClassifierModelOpt = None,
    classifier_runtime: ClassifierRuntimeOpt = "torch",
    local_only: LocalOnlyOpt = False,
    redact: RedactOpt = None,
    keep_pii: KeepPiiOpt = False,
    rubrics_dir: RubricsDir = None,
    suites_dir: Annotated[list[Path] | None, typer.Option("--suites-dir", help="A folder of suite folders, "
                                                          "searched before the built-ins.")] = None,
) -> None:
    """Play SUITE against the target chatbot, judge every answer with the rubrics and cascade, read
    every refusal, and write release.json / release.md beside the results (a rerun resumes). Then
    gate it: psyjudge gate OUT --policy POLICY."""
    from judge.release import TargetRunConfig, run_target

    if local_only:
        # Every remote model stops the run here, before a suite is read or a server started.
        endpoints = [(role, spec, base) for role, spec, base in (
            ("target", target, target_api_base), ("simulator", simulator, simulator_api_base),
            ("judge", judge, api_base)) if spec is not None and _local_kind(spec) is None]
        check_local_only(endpoints)
    suites = _suites(suite, suites_dir)
    plan = build_plan(tiers, mode, strict, rules_threshold, no_programs, classifier_model, classifier_runtime)
    rubrics = [_rubric(ref, rubrics_dir) for ref in (rubric or _default_rubrics(suites, rubrics_dir))]
    prompt_text: str | None = None
    if system_prompt is not None:
        try:
            prompt_text = system_prompt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"--system-prompt {system_prompt}: cannot read it: {exc}", EXIT_INPUT)
    options = _judge_options(api_base, api_key, concurrency, max_attempts, timeout, cache_dir, no_cache,
                             samples=samples, sample_temperature=sample_temperature, review_below=review_below,
                             local_only=local_only, redact=redact, keep_pii=keep_pii)
    common = {"max_attempts": max_attempts, "timeout_s": timeout, "cache_dir": cache_dir, "use_cache": not no_cache,
              "local_only": local_only, "redact": redact}
    personas = any(c.kind.value == "persona" for s in suites for c in s.cases)
    with judging(plan, judge, options, rubrics) as (config, description):
        judge_config = config if plan.uses_llm else None
        if refusal_judge is None:
            from judge.judges import choose_judge

            refusal_judge = judge_config is not None and choose_judge(judge).kind == "litellm"
        target_settings = {**common, "api_base": target_api_base,
                           "api_key": SecretStr(target_api_key) if target_api_key else None,
                           "temperature": target_temperature, "max_tokens": target_max_tokens,
                           "concurrency": target_concurrency}
        with contextlib.ExitStack() as stack:
            target_config = stack.enter_context(open_endpoint(target, "target", judge_config, judge, target_settings))
            simulator_config = None
            if personas:
                sim_spec = simulator or (judge or "local" if judge_config is not None else target)
                sim_settings: dict[str, Any] = {**common, "api_base": simulator_api_base, "max_tokens": 256,
                                                "temperature": simulator_temperature, "concurrency": target_concurrency}
                if simulator is None and judge_config is not None and _local_kind(sim_spec) is None:
                    # The judge's own endpoint and key: the simulator is the judge model, asked as a user.
                    key = os.environ.get(API_KEY_ENV)
                    sim_settings.update(api_base=simulator_api_base or judge_config.api_base or
                                        os.environ.get(API_BASE_ENV),
                                        api_key=judge_config.api_key or (SecretStr(key) if key else None))
                if simulator is None and judge_config is None:
                    sim_settings.update(api_base=target_config.api_base, api_key=target_config.api_key)
                simulator_config = stack.enter_context(open_endpoint(sim_spec, "simulator", judge_config, judge,
                                                                     sim_settings))
            run_config = TargetRunConfig(target=target_config, system_prompt=prompt_text, simulator=simulator_config,
                                         concurrency=target_concurrency, limit=limit,
                                         refusal_threshold=refusal_threshold, refusal_llm=refusal_judge)
            typer.echo(f"target: {target_config.model}; suites: {', '.join(s.key for s in suites)}; rubrics: "
                       f"{', '.join(r.key for r in rubrics)}; mode: {plan.mode}; judge: {description}", err=True)
            outcome = run_target(suites, run_config, rubrics, out, config, plan, retry_errors=retry_errors,
                                 progress=progress, judge_description=description)
    report = outcome.report
    from judge.release_report import format_release

    typer.echo(format_release(report).split("\n## ")[0].rstrip())
    typer.echo(f"played now: {outcome.played_now} case(s), {outcome.target_calls} target call(s), "
               f"{outcome.target_cache_hits} from the cache, {outcome.simulator_calls} simulator call(s)")
    typer.echo(f"wrote {out / 'release.json'} and release.md; gate it with: psyjudge gate {out} --policy POLICY")


def register(app: typer.Typer) -> None:
    app.command(name="run")(run)
