"""The data model: what flows between ingest, tiers, the cascade and the results store.

Pure pydantic v2 models and enums, no I/O. Every model forbids unknown fields so that a typo in a
rubric file or a stale results row is an error with a name, never a silently ignored value.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""Rubric and sub-question ids: lower-case, start with a letter, usable in templates and YAML."""


class Strict(BaseModel):
    """Base for every model here: unknown fields are an error, never a silent fallback."""

    model_config = ConfigDict(extra="forbid")


class Label(StrEnum):
    SAFE = "SAFE"
    BORDERLINE = "BORDERLINE"
    HARMFUL = "HARMFUL"


SEVERITY: dict[Label, int] = {Label.SAFE: 0, Label.BORDERLINE: 1, Label.HARMFUL: 2}
"""The order of the labels when one must be chosen among several: the most severe wins."""

ERROR: Literal["ERROR"] = "ERROR"
"""The verdict label when no tier could produce a grade. It is never a Label and never SAFE."""

VerdictLabel = Label | Literal["ERROR"]


class AnswerValue(StrEnum):
    YES = "yes"
    NO = "no"
    NOT_APPLICABLE = "n/a"


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class RiskTier(StrEnum):
    """The user's risk as known to the deploying service (for example from a triage step)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    UNKNOWN = "unknown"


class Turn(Strict):
    role: Role
    content: str


class RecordMeta(Strict):
    region: str | None = Field(
        default=None, description="Where the user is (ISO country or region code, e.g. 'US', 'GB')."
    )
    model_id: str | None = Field(default=None, description="The chatbot that wrote the response.")
    user_risk_tier: RiskTier | None = None
    extra: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Other input columns, kept for reports and evaluation."
    )


class Record(Strict):
    """One chatbot response to judge, with the conversation that led to it."""

    id: str = Field(min_length=1)
    turns: list[Turn] = Field(
        default_factory=list, description="The conversation before the judged response, in order."
    )
    response: str = Field(min_length=1, description="The chatbot response being judged.")
    meta: RecordMeta = Field(default_factory=RecordMeta)
    source_line: int | None = Field(default=None, description="Line (or row) in the input file.")

    @field_validator("response")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the response is empty")
        return value

    def content_hash(self) -> str:
        """A hash of everything that can change a verdict: the conversation, the response, the
        metadata. The source line is left out so that reordering a file does not rescore it."""
        payload = self.model_dump(mode="json", exclude={"id", "source_line"})
        return sha256_json(payload)


class SubQuestion(Strict):
    """A factual question about the response, answerable from the text alone."""

    id: Identifier
    text: str = Field(min_length=10)
    guidance: str = Field(default="", description="How to answer edge cases; shown to the judge.")
    allows_na: bool = Field(
        default=False, description="Whether 'n/a' is a valid answer. Off by default: a judge that "
        "dodges a harm question with 'n/a' has not answered it, and must not pass as a 'no'.")
    rationale: str = Field(min_length=10, description="Why a clinician asks this.")
    source: str = Field(min_length=2, description="The clinical principle or guidance it rests on.")
    lexicon: Identifier | None = Field(
        default=None, description="A lexicon of the rubric whose terms are shown to the judge with this question.")


class Answer(Strict):
    question_id: Identifier
    value: AnswerValue
    evidence: str = Field(default="", description="A verbatim quote from the judged text.")
    evidence_verified: bool | None = Field(
        default=None, description="Whether the evidence quote was found in the judged text."
    )
    rationale: str = ""
    confidence: float | None = Field(default=None, ge=0.0, le=1.0,
                                     description="The judge's own confidence; None when it gave none.")
    where: str | None = Field(default=None, description="Which text the evidence is in, for programmatic "
                              "answers: 'response' or 'turn N' (0-based index into the conversation).")
    span: tuple[int, int] | None = Field(default=None, description="Start and end of the evidence in that "
                                         "text, in the original (not the de-obfuscated) characters.")
    source: str | None = Field(default=None, description="The check or program that gave a programmatic answer.")


class Usage(Strict):
    """Tokens, money and time spent. Summed across calls and tiers."""

    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = Field(default=0, description="Input tokens the provider served from its "
                                     "prompt cache (for the local judge: the rubric prefix kept warm).")
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = Field(
        default=True, description="False when the provider's price is not in litellm's cost map."
    )
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cost_known=self.cost_known and other.cost_known,
            seconds=self.seconds + other.seconds,
        )


class Exchange(Strict):
    """One request to a judge model and its raw reply, kept so that an auditor can replay it."""

    messages: list[dict[str, str]]
    prompt_sha256: str
    raw_reply: str | None = None
    error: str | None = None
    cached: bool = False
    redacted: bool = Field(default=False, description="True when personal data was replaced before sending: "
                           "`messages` and `raw_reply` are then exactly what left and reached the machine, with "
                           "placeholders such as [EMAIL_1].")
    pii_mapping: dict[str, str] | None = Field(default=None, description="Placeholder -> original for this "
                                               "request; written only with --keep-pii.")
    sample: int | None = Field(default=None, description="Which sample (0-based) of a sampled judgement the "
                               "request belongs to; None when the judge was asked once.")


class Lexicon(Strict):
    """Terms a clinician wants the judge (and the rules tier) to look for, kept as data so that
    adding a term is an edit to a list, not to a question."""

    description: str = Field(min_length=10)
    terms: list[str] = Field(min_length=1)
    source: str = Field(min_length=2, description="Where the terms come from.")

    @field_validator("terms")
    @classmethod
    def _distinct_terms(cls, value: list[str]) -> list[str]:
        cleaned = [t.strip() for t in value]
        if any(not t for t in cleaned):
            raise ValueError("a lexicon term is empty")
        folded = [t.casefold() for t in cleaned]
        dupes = sorted({t for t, f in zip(cleaned, folded, strict=True) if folded.count(f) > 1})
        if dupes:
            raise ValueError(f"duplicate lexicon term(s): {', '.join(dupes)}")
        return cleaned


class Agreement(Strict):
    """How reproducible a sampled LLM label is: the judge was asked `samples` times at a non-zero
    temperature and the rubric's rule read each reply. The label is the majority; a disagreement
    means the answers sit near the rule's decision boundary or the response is ambiguous, which is a
    reason for a person to look, not a verdict of its own."""

    samples: int = Field(ge=2, description="How many times the judge was asked.")
    valid: int = Field(ge=1, description="Samples whose reply gave a label (a failed or malformed one is no vote).")
    failed: int = Field(ge=0, description="Samples that gave no label: the call failed, or the reply stayed "
                        "malformed after its re-ask.")
    votes: dict[str, int] = Field(description="Label -> number of valid samples that gave it.")
    labels: list[Label | None] = Field(default_factory=list, description="Each sample's label in order, None "
                                       "where the sample failed.")
    majority: Label = Field(description="The label of the verdict.")
    rate: float = Field(ge=0.0, le=1.0, description="Votes for the majority / valid samples.")
    tie: bool = Field(default=False, description="Several labels had the most votes; the most severe of them was "
                      "taken.")
    review: bool = Field(description="Flagged for human review: the rate is under review_below, or a tie.")
    review_below: float = Field(ge=0.0, le=1.0, description="The threshold the flag was set against.")


class TierResult(Strict):
    """What one tier said about one record under one rubric. label None means the tier abstained
    or failed; an error is never a grade."""

    tier: str
    label: Label | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0,
                                     description="None when the tier gave no confidence.")
    answers: list[Answer] = Field(default_factory=list)
    fired_rule: str | None = Field(
        default=None, description="Which verdict rule produced the label, for the audit trail."
    )
    applicable: bool | None = Field(
        default=None, description="False when the rubric's topic is absent (its label is then SAFE and "
        "does not push a multi-rubric verdict); for a tier that abstains, that of its fallback label; None "
        "when it gave neither.")
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
    model: str | None = None
    judged_text: str | None = Field(
        default=None, description="The text the tier judged, when it differs from the raw response "
        "(apology and disclaimer framing stripped).",
    )
    exchanges: list[Exchange] = Field(default_factory=list)
    fallback_label: Label | None = Field(
        default=None, description="The label this tier's answers support when it abstains, used only if no "
        "tier decides (the LLM failed or is not configured); the verdict is then marked degraded.")
    fallback_rule: str | None = None
    agreement: Agreement | None = Field(
        default=None, description="For an LLM judge asked several times (--samples): how its samples voted. "
        "None when it was asked once.")


LedgerOutcome = Literal["decided", "abstained", "error", "compared", "skipped"]
"""What a tier did for one record: it `decided` the label; it `abstained` (no label, or one below its
threshold) and the cascade went on; it failed (`error`); it ran after the decision only so that the
tiers can be compared (`compared`, mode `all`); or it was not asked (`skipped`: an earlier tier
decided)."""


class LedgerEntry(Strict):
    """One tier's line in a verdict's cost ledger."""

    tier: str
    outcome: LedgerOutcome
    label: Label | None = Field(default=None, description="The tier's own label, decided or not.")
    confidence: float | None = None
    stops: bool = Field(default=False, description="Whether this label would stop the cascade (confident "
                        "enough, or the last tier); in mode `all`, the first such tier is the cascade's answer.")
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    seconds: float = Field(default=0.0, description="Wall-clock seconds the tier took for this record.")


class Verdict(Strict):
    """The final word on one record under one rubric: one line of results.jsonl."""

    record_id: str
    record_sha256: str
    rubric: str = Field(description="id@version")
    rubric_sha256: str = Field(description="Hash of the rubric file and its templates.")
    label: VerdictLabel
    decided_by: str | None = Field(default=None, description="The tier whose label was used.")
    applicable: bool | None = Field(
        default=None, description="False when the rubric's topic is absent from the record; None on ERROR.")
    tiers: list[TierResult]
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    response: str = Field(description="The raw response as ingested, apology framing and all.")
    meta: RecordMeta = Field(default_factory=RecordMeta)
    created_at: str
    rubric_results: list[Verdict] = Field(
        default_factory=list, description="For a record judged under several rubrics: each rubric's own "
        "verdict. The label above is then the most severe applicable one.")
    degraded: bool = Field(default=False, description="True when no tier decided and the label is a cheaper "
                           "tier's fallback (see TierResult.fallback_label); `error` then says why.")
    mode: Literal["cascade", "all", "single"] = Field(
        default="cascade", description="How the tiers were run (judge.cascade.CascadeMode).")
    ledger: list[LedgerEntry] = Field(
        default_factory=list, description="Every tier of the plan, in order: whether it ran, what it said, and "
        "its tokens, money and seconds. Empty on a combined multi-rubric verdict (see rubric_results).")
    agreement: Agreement | None = Field(
        default=None, description="The deciding tier's agreement when it is the sampled LLM judge; None when a "
        "deterministic tier decided or the judge was asked once. On a combined verdict: the rubric verdict with "
        "the lowest rate, flagged for review if any rubric verdict is.")

    @property
    def is_error(self) -> bool:
        return self.label == ERROR

    @property
    def label_name(self) -> str:
        return self.label.value if isinstance(self.label, Label) else self.label


class RubricExample(Strict):
    """A labelled example written for the rubric. `answers` are a clinician's answers to every
    sub-question; `psyjudge rubric test` checks that the verdict rule turns them into `expected`,
    and, given a judge, that the judge reaches the same label."""

    id: Identifier
    description: str = ""
    turns: list[Turn] = Field(default_factory=list)
    response: str = Field(min_length=1)
    region: str | None = None
    expected: Label
    answers: dict[Identifier, AnswerValue]


class RuleSpec(Strict):
    """One line of a declarative verdict rule: `label` when the condition `when` holds.

    A condition is a mapping with exactly one key: `yes: q`, `no: q` or `na: q` (the answer to
    sub-question q), `any_yes: [q, ...]`, `any: [cond, ...]`, `all: [cond, ...]` or `not: cond`.
    It is parsed and checked by judge.rubrics; nothing is ever evaluated as code."""

    name: Identifier
    label: Label
    when: dict[str, Any]
    because: str = Field(default="", description="The clinical reason, shown in reports.")


class VerdictRuleSpec(Strict):
    applies_when: dict[str, Any] | None = Field(
        default=None, description="A condition on the answers; when it does not hold, the rubric's topic is "
        "absent and the rubric is not applicable (SAFE, and it does not push a multi-rubric verdict), "
        "unless a HARMFUL rule holds: harm evidence outranks an answer that the topic is absent.")
    rules: list[RuleSpec] = Field(min_length=1, description="Tried in order; the first match wins.")
    otherwise: Label = Field(description="The label when no rule matches.")


class TemplateNames(Strict):
    system: str = "judge_system.j2"
    user: str = "judge_user.j2"


class RubricSpec(Strict):
    """The contents of a rubric.yaml."""

    id: Identifier
    version: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+(\.\d+)?$")]
    change_note: str = Field(default="", description="Why this version differs from the one before it; the "
                             "studio writes it on save, with the same note in CHANGELOG.md beside the rubric.")
    title: str = Field(min_length=3)
    owner: str = Field(min_length=2)
    description: str = Field(min_length=10)
    sub_questions: list[SubQuestion] = Field(min_length=1)
    reasoning_guide: str = Field(
        default="", description="What the judge should note in its reasoning before it answers: the "
        "few facts the verdict turns on. Small judges answer far better when they write these first.")
    verdict: VerdictRuleSpec
    templates: TemplateNames = Field(default_factory=TemplateNames)
    include: list[Identifier] = Field(
        default_factory=list, description="Shared partials (`_shared/<name>.yaml`) whose sub-questions and "
        "lexicons are added to this rubric's, after its own.")
    lexicons: dict[Identifier, Lexicon] = Field(default_factory=dict)
    resource_populations: list[str] = Field(
        default_factory=list, description="Which crisis lines of the user's region the judge is shown "
        "(populations from the resource registry, e.g. general, youth, eating_disorders); none when empty.")
    checks: list[dict[str, Any]] = Field(
        default_factory=list, description="Programmatic checks for the rules tier, each answering one "
        "sub-question (kinds in judge.checks: lexicon, pattern, crisis_resource, resource_region, refusal, "
        "apology); checked when the rubric is loaded.")
    examples: list[RubricExample] = Field(min_length=1)


class PartialSpec(Strict):
    """A shared partial (`_shared/<id>.yaml`): sub-questions and lexicons that several rubrics include."""

    id: Identifier
    version: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+(\.\d+)?$")]
    description: str = Field(min_length=10)
    sub_questions: list[SubQuestion] = Field(min_length=1)
    lexicons: dict[Identifier, Lexicon] = Field(default_factory=dict)
    checks: list[dict[str, Any]] = Field(default_factory=list, description="Checks for the partial's questions; "
                                         "added to the including rubric's.")


def sha256_json(payload: Any) -> str:
    """sha256 of a canonical JSON encoding (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
