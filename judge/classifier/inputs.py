"""What the classifier reads of a record: the judged response and the user turn it answers.

The same function prepares text for training and for inference, so a model never sees a form at
run time that it did not learn from. The response loses its apology and disclaimer framing (an
apology does not make a harmful answer safe, so the model should not learn that it does), and
text that hides itself (leetspeak, spacing, homoglyphs, base64) is read in its de-obfuscated form,
with decoded runs appended. Plain text is left as written: casing and punctuation carry meaning for
cased encoders.
"""

from __future__ import annotations

from dataclasses import dataclass

from judge.framing import strip_apology
from judge.normalize import normalize
from judge.schema import Record, Role

INPUT_FORMAT = "psyjudge-input-v1"
"""Names this preparation; a model records it, and a model made for another format is refused."""

CONTEXT_CHARS = 2000
"""Only the end of a long user turn is kept: it is what the response answers."""


@dataclass(frozen=True)
class ModelInput:
    """The two texts a model sees: the user turn before the response (may be empty) and the response."""

    context: str
    response: str


def prepare_text(text: str) -> str:
    stripped = strip_apology(text).text
    view = normalize(stripped)
    if not view.undone and not view.decoded:
        return stripped.strip()
    decoded = " ".join(d.view.text for d in view.decoded)
    return f"{view.text.strip()} {decoded}".strip()


def model_input(record: Record) -> ModelInput:
    user = next((t.content for t in reversed(record.turns) if t.role is Role.USER), "")
    return ModelInput(context=prepare_text(user[-CONTEXT_CHARS:]) if user.strip() else "",
                      response=prepare_text(record.response))


def text_input(response: str, context: str = "") -> ModelInput:
    """The input for a bare (context, response) pair, as tables and benchmarks give them."""
    return ModelInput(context=prepare_text(context[-CONTEXT_CHARS:]) if context.strip() else "",
                      response=prepare_text(response))
