"""The contract every programmatic check meets, the registry that names check kinds, and the
prepared views of a record that checks read.

A check is declared in a rubric's `checks:` list and answers one named sub-question: yes or no with
a confidence and the evidence span in the original text, or nothing (it abstains). A new kind is one
file with a @register_check class; the rubric loader builds checks by their `kind`.

A check marked `precision: high` is one whose "yes" is trusted to decide a label on its own: the
rules tier decides HARMFUL only through such answers. Everything else is a hint for the fallback
verdict and for the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import Field, ValidationError, model_validator

from judge.normalize import Normalized, normalize
from judge.schema import AnswerValue, Identifier, Lexicon, Record, Role, Strict, SubQuestion

Scope = Literal["response", "user", "assistant", "conversation"]


class CheckDefinitionError(ValueError):
    """A check declaration that cannot be used: `field` names where, `problem` says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class CheckSpec(Strict):
    """Fields every check declaration has; each kind adds its own."""

    id: Identifier
    kind: str
    question: Identifier = Field(description="The sub-question this check answers.")
    answer: Literal["yes", "no"] = Field(default="yes",
                                         description="The answer when the check finds what it looks for.")
    precision: Literal["high", "normal"] = Field(
        default="normal", description="high: a finding is trusted to decide a label without a judge. Only for "
        "checks whose hits were shown to be right on the labelled data (see bench/results/rules_quality.md).")
    confidence: float = Field(default=0.9, ge=0.0, le=1.0, description="Confidence of a finding.")
    when_absent: Literal["abstain", "no"] = Field(
        default="abstain", description="The answer when nothing is found: abstain (absence proves nothing) or "
        "no (the check looks for everything that would make the answer yes).")
    absent_confidence: float = Field(default=0.6, ge=0.0, le=1.0)
    scope: Scope = Field(default="response", description="Which text is searched: the response, the user's "
                         "turns, the assistant's (earlier turns and the response), or every turn and the response.")
    why: str = Field(min_length=10, description="Why this check answers the question, for reviewers.")

    @model_validator(mode="after")
    def _high_means_yes(self) -> CheckSpec:
        if self.precision == "high" and self.answer != "yes":
            raise ValueError("precision: high is only for checks that answer 'yes': a label is decided only "
                             "from harm that was found, never from harm that was not")
        return self


@dataclass(frozen=True)
class CheckEnv:
    """What a check may refer to when it is compiled: the rubric's questions and lexicons."""

    questions: Mapping[str, SubQuestion]
    lexicons: Mapping[str, Lexicon]


@dataclass(frozen=True)
class Finding:
    check: str
    question: str
    value: AnswerValue
    confidence: float
    high_precision: bool
    evidence: str = ""
    where: str | None = None  # "response", "turn 2" (0-based index into the record's turns)
    span: tuple[int, int] | None = None  # in the original text named by `where`
    note: str = ""


@dataclass(frozen=True)
class Text:
    """One searchable text of a record: where it is, and its de-obfuscated view."""

    where: str
    view: Normalized

    @property
    def original(self) -> str:
        return self.view.original


@dataclass
class Subject:
    """A record prepared for checks. Views are built on first use and shared by every check."""

    record: Record
    _views: dict[str, Text] = field(default_factory=dict)
    _memo: dict[tuple[str, str], Any] = field(default_factory=dict)

    def memo(self, kind: str, where: str, compute: Callable[[], Any]) -> Any:
        """A result that several checks need (the number check of a text, its refusal reading),
        computed once per record."""
        key = (kind, where)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _text(self, where: str, original: str) -> Text:
        text = self._views.get(where)
        if text is None:
            text = self._views[where] = Text(where, normalize(original))
        return text

    @property
    def response(self) -> Text:
        return self._text("response", self.record.response)

    def texts(self, scope: Scope) -> list[Text]:
        if scope == "response":
            return [self.response]
        role = {"user": Role.USER, "assistant": Role.ASSISTANT}.get(scope)
        turns = [self._text(f"turn {i}", t.content) for i, t in enumerate(self.record.turns)
                 if role is None or t.role is role]
        # The response first: its evidence is the one a reader looks for.
        return turns if scope == "user" else [self.response, *turns]


class Check(Protocol):
    spec: CheckSpec

    def run(self, subject: Subject) -> Finding | None: ...


class BaseCheck:
    """Shared behaviour: turning a hit, or its absence, into a Finding."""

    spec: CheckSpec

    def hit(self, text: Text, span: tuple[int, int], note: str = "") -> Finding:
        start, end = span
        return Finding(self.spec.id, self.spec.question, AnswerValue(self.spec.answer), self.spec.confidence,
                       self.spec.precision == "high", text.original[start:end], text.where, span, note)

    def absent(self) -> Finding | None:
        if self.spec.when_absent == "abstain":
            return None
        return Finding(self.spec.id, self.spec.question, AnswerValue(self.spec.when_absent),
                       self.spec.absent_confidence, False, note="nothing found")


CheckClass = Callable[[Any, CheckEnv], Check]


@dataclass(frozen=True)
class _Kind:
    spec: type[CheckSpec]
    build: CheckClass


CHECK_KINDS: dict[str, _Kind] = {}


def register_check(kind: str, spec: type[CheckSpec]) -> Callable[[type[Any]], type[Any]]:
    """Register a check class, built as `cls(spec, env)`, under `kind`."""

    def decorate(cls: type[Any]) -> type[Any]:
        if kind in CHECK_KINDS:
            raise ValueError(f"check kind {kind!r} is already registered")
        CHECK_KINDS[kind] = _Kind(spec, cls)
        cls.kind = kind
        return cls

    return decorate


def _problem(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(check)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return where, message


def compile_checks(raw: Sequence[Any], env: CheckEnv) -> tuple[Check, ...]:
    """Build every declared check, or raise CheckDefinitionError naming `[index].field`."""
    from judge import checks as _kinds  # noqa: F401  (registers the built-in kinds)

    built: list[Check] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise CheckDefinitionError(where, f"expected a mapping, got {type(item).__name__}")
        kind = item.get("kind")
        if kind not in CHECK_KINDS:
            raise CheckDefinitionError(f"{where}.kind", f"unknown check kind {kind!r}; expected one of "
                                       f"{', '.join(sorted(CHECK_KINDS))}")
        try:
            spec = CHECK_KINDS[kind].spec.model_validate(item)
        except ValidationError as exc:
            field_name, message = _problem(exc)
            raise CheckDefinitionError(f"{where}.{field_name}", message) from exc
        if spec.id in seen:
            raise CheckDefinitionError(f"{where}.id", f"duplicate check id {spec.id!r}")
        seen.add(spec.id)
        question = env.questions.get(spec.question)
        if question is None:
            raise CheckDefinitionError(f"{where}.question", f"unknown sub-question {spec.question!r}")
        try:
            built.append(CHECK_KINDS[kind].build(spec, env))
        except CheckDefinitionError as exc:
            raise CheckDefinitionError(f"{where}.{exc.field}", exc.problem) from exc
    return tuple(built)
