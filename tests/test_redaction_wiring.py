"""Redaction wired into every outgoing call, and no conversation text in stored errors or logs.

The wiring is tested with a small stand-in that has judge.redact.Redactor's methods (emails and
phone numbers by pattern, registry numbers kept), injected where JudgeModel takes a redactor; one
test runs the real Redactor end to end through the command line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from judge.cache import JsonCache
from judge.cli import app
from judge.judges import JudgeChoice, open_judge
from judge.models import JudgeCallError, JudgeConfig, JudgeModel, scrub_error
from judge.privacy import should_redact
from judge.target import ChatEndpoint, EndpointConfig
from tests.fakes.openai_server import FakeOpenAIServer, Status, prompt_text

runner = CliRunner()
EMAIL = "jane.roe@example.com"
PHONE = "415-555-0199"
TEXT = f"Write to me at {EMAIL} or call {PHONE}. Or call 988 tonight."


class StandInRedactor:
    """The Redactor interface over two patterns: enough to show what the adapter sends."""

    _PATTERNS = (("EMAIL", re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")),
                 ("PHONE", re.compile(r"\b\d{3}[-. ]?\d{3,4}(?:[-. ]\d{4})?\b")))

    def __init__(self, keep: set[str] | None = None) -> None:
        self.keep = keep if keep is not None else {"988"}
        self.mapping: dict[str, str] = {}
        self._by_original: dict[str, str] = {}

    def _placeholder(self, kind: str, original: str) -> str:
        if original not in self._by_original:
            count = sum(1 for p in self.mapping if p.startswith(f"[{kind}_")) + 1
            placeholder = f"[{kind}_{count}]"
            self._by_original[original] = placeholder
            self.mapping[placeholder] = original
        return self._by_original[original]

    def redact(self, text: str) -> Any:
        for kind, pattern in self._PATTERNS:
            def replace(match: re.Match[str], kind: str = kind) -> str:
                found = match.group(0)
                return found if found in self.keep else self._placeholder(kind, found)

            text = pattern.sub(replace, text)
        return type("Redaction", (), {"text": text, "found": []})()

    def redact_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": self.redact(m["content"]).text} for m in messages]

    def restore(self, text: str) -> str:
        for placeholder, original in self.mapping.items():
            text = text.replace(placeholder, original)
        return text


def _model(server: FakeOpenAIServer, tmp_path: Path, redact: bool, redactor: Any = None) -> JudgeModel:
    return JudgeModel(JudgeConfig(model="openai/fake", api_base=server.base_url, redact=redact,
                                  cache_dir=tmp_path / "cache", retry_initial_wait_s=0, retry_max_wait_s=0),
                      redactor=redactor)


def test_redacted_text_leaves_the_machine_and_the_reply_comes_back_restored(tmp_path: Path) -> None:
    # The judge quotes what it saw: with placeholders in, the quote holds placeholders.
    with FakeOpenAIServer(responder=lambda body: json.dumps({"evidence": prompt_text(body)})) as server:
        redactor = StandInRedactor()
        model = _model(server, tmp_path, True, redactor)
        reply = asyncio.run(model.complete([{"role": "user", "content": TEXT}], None, scope="s"))
        sent = prompt_text(server.requests[0])
        assert EMAIL not in sent and PHONE not in sent
        assert "[EMAIL_1]" in sent and "[PHONE_1]" in sent and "988" in sent
        assert model.request_redactor() is redactor and redactor.mapping == {"[EMAIL_1]": EMAIL, "[PHONE_1]": PHONE}
        # Evidence shown to a clinician quotes the real text; the cache keeps what the provider sent.
        assert EMAIL in reply.text and reply.received is not None and EMAIL not in reply.received
        model.remember(reply)
        cached = JsonCache(tmp_path / "cache").get(reply.key)
        assert cached is not None and EMAIL not in cached["text"] and "[EMAIL_1]" in cached["text"]
        # The same text gets the same placeholders, so the second ask is a cache hit with the same answer.
        again = asyncio.run(model.complete([{"role": "user", "content": TEXT}], None, scope="s"))
        assert again.cached and again.text == reply.text and server.calls == 1


def test_without_redaction_the_text_arrives_unchanged(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "ok") as server:
        redactor = StandInRedactor()
        reply = asyncio.run(_model(server, tmp_path, False, redactor).complete(
            [{"role": "user", "content": TEXT}], None, scope="s"))
        assert prompt_text(server.requests[0]) == TEXT and reply.received is None and redactor.mapping == {}


def test_the_target_is_sent_redacted_text_too(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "noted") as server:
        endpoint = ChatEndpoint(EndpointConfig(model="openai/t", api_base=server.base_url, redact=True,
                                               cache_dir=tmp_path), "target", redactor=StandInRedactor())
        assert asyncio.run(endpoint.reply([{"role": "user", "content": TEXT}])).text == "noted"
        assert EMAIL not in prompt_text(server.requests[0]) and "988" in prompt_text(server.requests[0])


@pytest.mark.parametrize(("requested", "model", "api_base", "expected"), [
    (None, "openai/gpt-4o-mini", None, True),
    (None, "openai/fake", "http://127.0.0.1:8080/v1", False),
    (None, "openai/fake", "https://llm.example.com/v1", True),
    (None, "ollama/llama3", None, False),
    (False, "openai/gpt-4o-mini", None, False),
    (True, "openai/fake", "http://127.0.0.1:8080/v1", True),
])
def test_redaction_default_follows_where_the_model_runs(requested: bool | None, model: str, api_base: str | None,
                                                        expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    assert should_redact(requested, model, api_base) is expected
    with open_judge(JudgeChoice("litellm", model=model), api_base=api_base, redact=requested) as config:
        assert config.redact is expected


def test_scrub_error_keeps_the_provider_message_and_drops_the_request() -> None:
    messages = [{"role": "user", "content": "I skipped every meal this week\nand I feel proud of it"}]
    echoed = ("litellm.BadRequestError: OpenAIException - Error code: 400 - {'error': {'message': 'invalid "
              "schema', 'request': {'model': 'x', 'messages': [{'role': 'user', 'content': 'I skipped every meal "
              "this week\\nand I feel proud of it'}]}}}")
    scrubbed = scrub_error(echoed, messages)
    assert "skipped every meal" not in scrubbed and "invalid schema" in scrubbed and "Error code: 400" in scrubbed
    plain = scrub_error("upstream refused: I skipped every meal this week (policy)", messages)
    assert plain == "upstream refused: [request text removed] (policy)"


SECRET = "I keep the pills in the blue box under my bed"


@pytest.mark.parametrize("echo", ["json", "plain"])
def test_a_provider_error_echoing_the_request_is_stored_and_logged_without_it(
        echo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A score against a loopback server that answers 400 with the request in its error: the
    conversation text is neither in the stored error nor in the captured logs."""
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"id": "r1", "prompt": "Where do you keep them?", "response": SECRET}) + "\n",
                   encoding="utf-8")
    caplog.set_level(logging.INFO)
    with FakeOpenAIServer() as server:
        def message(body: dict[str, Any]) -> str:
            if echo == "json":
                return f"invalid request: {json.dumps({'messages': body['messages']})}"
            return f"content rejected: {prompt_text(body)}"

        body = {"messages": [{"role": "user", "content": SECRET}]}
        server.script(*[Status(400, message=message(body)) for _ in range(4)])
        with pytest.raises(JudgeCallError) as caught:
            asyncio.run(JudgeModel(JudgeConfig(model="openai/fake", api_base=server.base_url, use_cache=False,
                                               max_attempts=1)).complete(body["messages"], None, scope="s"))
        assert SECRET not in str(caught.value) and "status 400" in str(caught.value)
        assert caught.value.__cause__ is None  # no chained provider error to print the body in a traceback

        # The same through `score`: the judge's rendered prompt holds the response, and the server echoes it.
        server.script(*[Status(400, message=f"content rejected: {SECRET}") for _ in range(4)])
        result = runner.invoke(app, ["score", str(log), "--rubric", "self_harm", "--out", str(tmp_path / "out"),
                                     "--judge", "openai/fake", "--api-base", server.base_url, "--tiers", "llm",
                                     "--workers", "1", "--concurrency", "1", "--no-progress", "--no-show"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    errors = [row["error"] for row in rows] + [t.get("error") for row in rows for t in row["tiers"]]
    assert any(e and "status 400" in e for e in errors)
    assert all(SECRET not in (e or "") for e in errors)
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert SECRET not in summary and SECRET not in result.output
    assert SECRET not in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("judge.redact") is None, reason="judge.redact is not installed")
def test_score_with_the_real_redactor_sends_no_email_and_keeps_988(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    response = f"Please call 988 now. You can also email our counsellor at {EMAIL}."
    log.write_text(json.dumps({"id": "r1", "metadata": {"region": "US"}, "prompt": "I want to die",
                               "response": response}) + "\n", encoding="utf-8")
    with FakeOpenAIServer(responder=lambda body: "{}") as server:
        result = runner.invoke(app, ["score", str(log), "--rubric", "self_harm", "--out", str(tmp_path / "out"),
                                     "--judge", "openai/fake", "--api-base", server.base_url, "--redact",
                                     "--tiers", "llm", "--workers", "1", "--no-progress", "--no-show"])
        sent = [prompt_text(body) for body in server.requests]
    assert result.exit_code == 0, result.output
    assert "redacted" in result.output and sent
    assert all(EMAIL not in text and "988" in text for text in sent)


@pytest.mark.skipif(importlib.util.find_spec("presidio_analyzer") is None, reason="presidio-analyzer is not installed")
def test_placeholders_are_numbered_per_request_so_the_same_record_is_sent_the_same_way(tmp_path: Path) -> None:
    """Judging another record first must not renumber this one's placeholders: a rerun, another
    order or another worker sends the same text and hits the same cache entry."""
    other = [{"role": "user", "content": "I'm Daniel, email daniel.k@example.org"}]
    mine = [{"role": "user", "content": f"My name is Priya and my email is {EMAIL}; call 988 if needed."}]
    with FakeOpenAIServer(responder=lambda body: "ok") as server:
        first = _model(server, tmp_path, redact=True)
        asyncio.run(first.complete(mine, None, scope="s"))
        fresh = _model(server, tmp_path / "other-cache", redact=True)
        asyncio.run(fresh.complete(other, None, scope="s"))
        asyncio.run(fresh.complete(mine, None, scope="s"))
        sent = [prompt_text(body) for body in server.requests]
    assert sent[0] == sent[2] and EMAIL not in sent[0] and "988" in sent[0] and "[EMAIL_1]" in sent[0]


@pytest.mark.skipif(importlib.util.find_spec("presidio_analyzer") is None, reason="presidio-analyzer is not installed")
@pytest.mark.parametrize("keep", [False, True])
def test_results_record_what_was_sent_and_the_mapping_only_with_keep_pii(tmp_path: Path, keep: bool) -> None:
    from tests.fakes.keyword_judge import respond

    log = tmp_path / "log.jsonl"
    response = f"Please call 988 now. You can also email our counsellor at {EMAIL}."
    log.write_text(json.dumps({"id": "r1", "region": "US", "prompt": "I want to die", "response": response}) + "\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    with FakeOpenAIServer(responder=respond) as server:
        result = runner.invoke(app, ["score", str(log), "--rubric", "self_harm", "--out", str(out), "--judge",
                                     "openai/fake", "--api-base", server.base_url, "--redact", "--tiers", "llm",
                                     "--workers", "1", "--no-progress", "--no-show", *(["--keep-pii"] if keep else [])])
    assert result.exit_code == 0, result.output
    verdict = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    exchange = verdict["tiers"][-1]["exchanges"][-1]
    assert exchange["redacted"] is True
    sent = json.dumps(exchange["messages"])
    assert EMAIL not in sent and "[EMAIL_1]" in sent and "988" in sent
    assert verdict["response"] == response  # the local record keeps the text as written
    if keep:
        assert exchange["pii_mapping"] == {"[EMAIL_1]": EMAIL}
    else:
        assert exchange["pii_mapping"] is None and EMAIL not in json.dumps(exchange)
