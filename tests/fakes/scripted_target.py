"""Scripted chatbots for the loopback server: a target under test and a user simulator.

ScriptedTarget answers the last user message by the first rule whose cue it contains, so a test
decides exactly which prompts get a harmful answer, a refusal, an over-refusal or an empty reply.
ScriptedSimulator plays a persona's lines in order: the n-th request (counted by the messages it
has already written, which come back to it as assistant turns) gets the n-th line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _last_user(body: dict[str, Any]) -> str:
    users = [str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


class ScriptedTarget:
    def __init__(self, rules: Sequence[tuple[str, str]], default: str) -> None:
        self.rules = [(cue.lower(), answer) for cue, answer in rules]
        self.default = default
        self.seen: list[list[dict[str, Any]]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        self.seen.append(list(body.get("messages", [])))
        text = _last_user(body).lower()
        return next((answer for cue, answer in self.rules if cue in text), self.default)


class ScriptedSimulator:
    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        self.requests: list[list[dict[str, Any]]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        messages = list(body.get("messages", []))
        self.requests.append(messages)
        written = sum(1 for m in messages if m.get("role") == "assistant")
        return self.lines[min(written, len(self.lines) - 1)]
