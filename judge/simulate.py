"""The user simulator: an LLM plays a persona card for N turns against the target.

The simulator sees the conversation from the user's side: its own earlier messages are its
(assistant) turns, the target's replies are the other party's (user) turns. Its system prompt is
rendered from `templates/simulator_system.j2` in Jinja's sandbox (a persona card is data a suite
author wrote, not code). What it writes is cleaned of the wrappers a chat model adds (quotes, a
"User:" prefix) and is then the next user message, exactly as the target receives it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment

from judge.target import ChatEndpoint, TargetReply

_START = "(The chat window opens. Write your first message to the assistant.)"
_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:user|me|person|message(?: \d+)?)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_QUOTED = re.compile(r'^\s*"(.*)"\s*$', re.DOTALL)


@lru_cache(maxsize=1)
def _template() -> Template:
    from importlib.resources import files

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    source = files("judge").joinpath("templates/simulator_system.j2").read_text(encoding="utf-8")
    return env.from_string(source)


def system_prompt(persona: str, region: str | None, turn: int, turns: int) -> str:
    return _template().render(persona=persona.strip(), region=region, turn=turn, turns=turns)


def simulator_messages(persona: str, region: str | None, history: list[dict[str, str]], turn: int,
                       turns: int) -> list[dict[str, str]]:
    """The request for the user's next message. `history` is the conversation so far as the target
    saw it (user and assistant turns, no system prompt)."""
    flipped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in history]
    if not flipped or flipped[0]["role"] != "user":
        flipped.insert(0, {"role": "user", "content": _START})
    return [{"role": "system", "content": system_prompt(persona, region, turn, turns)}, *flipped]


def clean_user_message(text: str) -> str:
    """The message itself: surrounding quotes and a speaker prefix removed."""
    text = _PREFIX.sub("", text.strip(), count=1)
    quoted = _QUOTED.match(text)
    return (quoted.group(1) if quoted else text).strip()


class UserSimulator:
    def __init__(self, endpoint: ChatEndpoint) -> None:
        self.endpoint = endpoint

    @property
    def model(self) -> str:
        return self.endpoint.config.model

    async def next_message(self, persona: str, region: str | None, history: list[dict[str, str]], turn: int,
                           turns: int) -> TargetReply:
        reply = await self.endpoint.reply(simulator_messages(persona, region, history, turn, turns))
        if reply.text is None:
            return reply
        text = clean_user_message(reply.text)
        if not text:
            return TargetReply(None, "simulator gave an empty message", reply.usage, reply.cached)
        return TargetReply(text, None, reply.usage, reply.cached)
