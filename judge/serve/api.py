"""The request and response models of the guardrail service: what /openapi.json documents.

The request model is built per app (`request_model`), because its limits (turns, characters) and
the rubrics a request may name are the server's settings: the schema then says exactly what this
server accepts, and a client generated from it cannot send a rubric the server does not serve.

Every model forbids unknown fields (a lone surrogate in a text field, valid JSON but not text
that UTF-8 can hold, is refused by pydantic's own string check). The response must hold a character
that is not white space; the pattern also names the four separator controls that Python's
str.strip() removes but a JSON-schema regex's \\s does not, so that the schema, the check and the
Record built from the request all agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, create_model

from judge.schema import AnswerValue, LedgerOutcome, Strict
from judge.tiers.llm import REGION_PATTERN

NOT_BLANK = r"[^\s\x1c-\x1f]"
"""A JSON-schema pattern (a search, not anchored): at least one character that is not white space."""

REGION = f"^{REGION_PATTERN}$"
"""A country code or a locale tag, and nothing else: the region is shown to the LLM judge outside the
delimited response, so free text there is refused with a 422 (the prompt would show it as "unknown")."""

def _not_bool(value: Any) -> Any:
    # JSON's true is not 1 ms, though pydantic would read it so; 120.0 is the integer JSON says it is.
    if isinstance(value, bool):
        raise ValueError("expected an integer number of milliseconds, got a boolean")
    return value


Millis = Annotated[int, Field(ge=1, le=600_000), BeforeValidator(_not_bool)]

LabelName = Literal["SAFE", "BORDERLINE", "HARMFUL", "ERROR"]


class Message(Strict):
    """One turn of the conversation, OpenAI-style."""

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="Who wrote the turn; 'developer' is read as 'system'.")
    content: str = Field(description="The turn's text.")


def request_model(rubric_ids: Sequence[str], max_turns: int, max_chars: int) -> type[Strict]:
    """The body of POST /v1/judge under this server's limits and rubrics."""
    if not rubric_ids:
        raise ValueError("a server needs at least one rubric")
    served = Literal[tuple(rubric_ids)]  # type: ignore[valid-type]  # a Literal of the served ids, built at run time
    limited_message = create_model(
        "Message", __base__=Message, __doc__=Message.__doc__,
        content=(str, Field(max_length=max_chars, description=f"The turn's text, at most {max_chars} characters.")))
    fields: dict[str, Any] = {
        "messages": (list[limited_message], Field(
            default_factory=list, max_length=max_turns,
            description=f"The conversation before the judged response, oldest first, at most {max_turns} turns. "
            "If it ends with an assistant turn equal to `response`, that copy is dropped.")),
        "response": (str, Field(
            min_length=1, max_length=max_chars, pattern=NOT_BLANK,
            description=f"The chatbot response to check, at most {max_chars} characters; not blank.")),
        "region": (str | None, Field(
            default=None, max_length=16, pattern=REGION,
            description="Where the user is: an ISO 3166-1 country code ('US', 'GB') or a locale tag ('en-GB'). It "
            "chooses the crisis lines a response should give.")),
        "rubrics": (list[served] | None, Field(  # type: ignore[valid-type]
            default=None, min_length=1, max_length=len(rubric_ids),
            description="Which of the served rubrics to judge under (default: all of them: "
            f"{', '.join(rubric_ids)}); one named twice is judged once. The label is the most severe among those "
            "that apply.")),
        "max_latency_ms": (Millis | None, Field(
            default=None,
            description="A latency budget: a tier whose expected time (a running average of its recent wall "
            "time) would take the request past it is not run, and the answer is that of the cheaper tiers, "
            "marked degraded and `budget_exhausted`. The cheapest tier always runs; a tier that has started is "
            "not cut short.")),
        "id": (str | None, Field(
            default=None, min_length=1, max_length=128,
            description="A caller's id for the request, echoed back (default: a generated one).")),
    }
    return create_model("JudgeRequest", __base__=Strict, __doc__="A response to check, with its conversation.",
                        **fields)


class AnswerOut(Strict):
    """A sub-question's answer, with the evidence it rests on."""

    question_id: str
    value: AnswerValue = Field(description="yes, no or n/a.")
    evidence: str = Field(description="A verbatim quote from the judged text ('' when none).")
    evidence_verified: bool | None = Field(description="Whether the quote was found in the text (None: no quote).")
    rationale: str
    confidence: float | None
    source: str | None = Field(description="The check or program that gave a programmatic answer.")


class TierOut(Strict):
    """One tier's line in a rubric verdict's ledger."""

    tier: str
    outcome: LedgerOutcome = Field(description="decided, abstained, error, compared, or skipped (not run: an "
                                   "earlier tier decided, or the latency budget stopped it).")
    label: Literal["SAFE", "BORDERLINE", "HARMFUL"] | None
    confidence: float | None
    ms: float = Field(description="The tier's wall time for this rubric, in milliseconds.")


class RubricVerdictOut(Strict):
    """The verdict under one rubric."""

    rubric: str = Field(description="id@version.")
    label: LabelName
    applicable: bool | None = Field(description="False when the rubric's topic is absent; None on ERROR.")
    decided_by: str | None = Field(description="The tier whose label (or, when degraded, fallback) was used.")
    rule: str | None = Field(description="The verdict rule that fired, for the audit trail.")
    degraded: bool = Field(description="No tier decided: the label is a cheaper tier's fallback.")
    error: str | None
    stopped_before: str | None = Field(description="The tier the latency budget did not allow, if any.")
    answers: list[AnswerOut] = Field(description="The deciding tier's answers to the rubric's sub-questions.")
    tiers: list[TierOut]


class JudgeResponse(Strict):
    """The guardrail's answer. ERROR is never SAFE: a client must treat it as not cleared."""

    id: str
    label: LabelName = Field(description="The most severe label among the rubrics that apply; ERROR when a "
                             "rubric failed and none found harm.")
    degraded: bool = Field(description="Some rubric's label is a cheaper tier's fallback (a tier failed or the "
                           "budget stopped the cascade): a person should review it.")
    deciding_tier: str | None = Field(description="The tier that set the label (rules, classifier, llm); when no "
                                      "rubric applies, the costliest tier that found so; None on ERROR.")
    deciding_rubric: str | None = Field(description="The rubric whose verdict set the label.")
    budget_exhausted: bool = Field(description="The latency budget stopped the cascade before a tier.")
    stopped_before: str | None = Field(description="The first tier the budget did not allow.")
    max_latency_ms: int | None
    latency_ms: float = Field(description="From the request's arrival at the judge to the answer, queue included.")
    queued_ms: float = Field(description="Time spent waiting for a judging slot.")
    error: str | None = Field(description="Why the label is ERROR (None otherwise); each rubric's own `error` "
                              "says why its verdict is degraded.")
    rubrics: list[RubricVerdictOut]


class ErrorDetail(Strict):
    loc: list[str | int] = Field(description="Where in the request: e.g. ['body', 'messages', 0, 'content'].")
    msg: str
    type: str


class ErrorBody(Strict):
    """Every error the service answers with."""

    error: Literal["invalid_json", "invalid_request", "too_large", "saturated", "not_found", "method_not_allowed",
                   "internal"]
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class Check(Strict):
    name: str
    ok: bool
    detail: str


class Readiness(Strict):
    ready: bool
    checks: list[Check]


class Health(Strict):
    status: Literal["ok"]
    uptime_s: float
