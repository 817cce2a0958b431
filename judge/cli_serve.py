"""`psyjudge serve`: parse the options, build the cascade, and run the guardrail service
(judge.serve) on uvicorn until interrupted.

Exit codes: 0 stopped normally; 2 bad usage (an unknown rubric, tier or limit, no judge, an address
that cannot be bound).
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from judge.cli_common import (
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
    NoCacheOpt,
    NoProgramsOpt,
    RedactOpt,
    RubricsDir,
    RulesThresholdOpt,
    StrictOpt,
    TiersOpt,
    TimeoutOpt,
    _fail,
    _judge_options,
    _rubric,
    bind_socket,
    build_plan,
    judging,
)
from judge.privacy import is_loopback_host

SERVE_RETRY_MAX_WAIT_S = 2.0


def register(app: typer.Typer) -> None:
    """Add this module's command to the psyjudge app."""
    app.command("serve")(serve_command)


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but loopback exposes the service "
                                      "(which has no authentication) beyond this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind (0: any free port).")] = 8080,
    rubric: Annotated[list[str] | None, typer.Option(
        "--rubric", "-r", help="Rubric id or folder to serve; repeatable (default: every built-in rubric).")] = None,
    tiers: TiersOpt = None,
    strict: StrictOpt = False,
    rules_threshold: RulesThresholdOpt = 0.9,
    no_programs: NoProgramsOpt = False,
    classifier_model: ClassifierModelOpt = None,
    classifier_runtime: ClassifierRuntimeOpt = "torch",
    judge: JudgeOpt = None,
    api_base: ApiBaseOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: ConcurrencyOpt = 8,
    max_attempts: AttemptsOpt = 2,
    timeout: TimeoutOpt = 30.0,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    local_only: LocalOnlyOpt = False,
    redact: RedactOpt = None,
    max_concurrency: Annotated[int, typer.Option(
        "--max-concurrency", min=1, max=4096, help="Requests judging at once.")] = 8,
    queue: Annotated[int, typer.Option(
        "--queue", min=0, max=100_000, help="Requests that may wait for a judging slot; any more get 429 with "
        "Retry-After at once.")] = 16,
    queue_wait: Annotated[float, typer.Option(
        "--queue-wait", min=0.0, max=600.0, help="Seconds a queued request waits for a slot before a 429.")] = 10.0,
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", min=256, help="Largest request body; a larger one gets 413.")] = 1_048_576,
    max_turns: Annotated[int, typer.Option("--max-turns", min=0, help="Most conversation turns per request.")] = 100,
    max_chars: Annotated[int, typer.Option(
        "--max-chars", min=1, help="Most characters in one turn or in the response.")] = 32_000,
    expect_ms: Annotated[list[str] | None, typer.Option(
        "--expect-ms", help="A tier's starting latency estimate for max_latency_ms budgets, TIER=MS, repeatable "
        "(default rules=5, classifier=100, llm=3000; measured requests then take over).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
    rubrics_dir: RubricsDir = None,
) -> None:
    """Serve the cascade as an inline guardrail: POST /v1/judge, /healthz, /readyz, /metrics, with the
    schema at /openapi.json and /docs."""
    from judge.serve import ServeSettings

    plan = build_plan(tiers, "cascade", strict, rules_threshold, no_programs, classifier_model, classifier_runtime)
    if rubric:
        rubrics = [_rubric(ref, rubrics_dir) for ref in rubric]
    else:
        from judge.rubrics import available_rubrics

        rubrics = [_rubric(name, rubrics_dir) for name in sorted(available_rubrics(rubrics_dir or []))]
    ids = [rb.id for rb in rubrics]
    if len(set(ids)) != len(ids):
        _fail(f"--rubric: a rubric is named twice: {', '.join(ids)}", EXIT_USAGE)
    try:
        settings = ServeSettings(max_concurrency=max_concurrency, queue=queue, queue_wait_s=queue_wait,
                                 max_body_bytes=max_body_bytes, max_turns=max_turns, max_chars=max_chars,
                                 expected_ms=_expected(expect_ms or []))
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-') if first['loc'] else 'expect-ms'}: {first['msg']}",
              EXIT_USAGE)
    unserved = set(settings.expected_ms) - set(plan.tiers)
    if unserved:
        _fail(f"--expect-ms: tier(s) not in the cascade: {', '.join(sorted(unserved))} (tiers: "
              f"{', '.join(plan.tiers)})", EXIT_USAGE)
    if not is_loopback_host(host):
        typer.secho(f"warning: --host {host} exposes the service beyond this machine; it has no authentication, "
                    "so put it behind one (a reverse proxy with TLS and auth) or bind 127.0.0.1",
                    err=True, fg=typer.colors.YELLOW)
    sock = bind_socket(host, port)
    options = _judge_options(api_base, api_key, concurrency, max_attempts, timeout, cache_dir, no_cache,
                             local_only=local_only, redact=redact)
    # A request is waiting on the answer: a provider's long Retry-After must not hold it for a minute.
    options["retry_max_wait_s"] = SERVE_RETRY_MAX_WAIT_S
    with judging(plan, judge, options, rubrics) as (config, description):
        import uvicorn

        from judge.runner import build_cascade
        from judge.serve import create_app

        cascade, model = build_cascade(config, plan)
        app = create_app(cascade, rubrics, settings, judge=model if plan.uses_llm else None)
        bound_host, bound_port = sock.getsockname()[:2]
        where = f"[{bound_host}]" if ":" in bound_host else bound_host
        typer.echo(f"psyjudge serve: http://{where}:{bound_port} (docs /docs); rubrics: "
                   f"{', '.join(rb.key for rb in rubrics)}; tiers: {', '.join(plan.tiers)}; judge: {description}; "
                   f"{settings.max_concurrency} judging at once, queue {settings.queue}", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
        server.run(sockets=[sock])


def _expected(pairs: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for pair in pairs:
        tier, sep, value = pair.partition("=")
        try:
            found[tier.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            _fail(f"--expect-ms: expected TIER=MS (e.g. llm=2500), got {pair!r}", EXIT_USAGE)
    return found


def main() -> None:
    app = typer.Typer(add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
