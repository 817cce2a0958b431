"""Rubrics as data: load and check a rubric folder, render its templates, apply its verdict rule.

A rubric folder holds `rubric.yaml` (id, version, sub-questions, verdict rule, labelled examples)
and optionally its own `.j2` templates. Templates are looked up in the rubric's folder first, then
in the shared `_shared/` folder beside the built-in rubrics, so a rubric can override any of them.

Rendering runs in Jinja's SandboxedEnvironment with StrictUndefined: a template cannot reach
Python internals and cannot silently print an empty string for a misspelt variable. The verdict
rule is parsed into a small condition tree and evaluated here; nothing is passed to `eval`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from judge.schema import AnswerValue, Label, PartialSpec, Record, RecordMeta, RubricSpec

if TYPE_CHECKING:
    from judge.checks.base import Check

RUBRIC_FILE = "rubric.yaml"
SHARED_DIR = "_shared"
RUBRICS_PATH_ENV = "PSYJUDGE_RUBRICS_PATH"


class DefinitionError(ValueError):
    """A clinician-edited data file that cannot be used, with the file, the field and what was expected."""

    def __init__(self, file: Path | str, field: str, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}")


class RubricError(DefinitionError):
    """A rubric (or a partial it includes) that cannot be used."""


# --- verdict rule -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Is:
    question: str
    value: AnswerValue

    def holds(self, answers: Mapping[str, AnswerValue]) -> tuple[bool, list[str]]:
        ok = answers[self.question] == self.value
        return ok, [self.question] if ok else []

    def holds3(self, answers: Mapping[str, AnswerValue]) -> tuple[bool | None, list[str]]:
        if self.question not in answers:
            return None, []
        return self.holds(answers)


@dataclass(frozen=True)
class _Any:
    parts: tuple[_Cond, ...]

    def holds(self, answers: Mapping[str, AnswerValue]) -> tuple[bool, list[str]]:
        # Every matching branch is reported, so the audit trail shows all the reasons, not the first.
        results = [part.holds(answers) for part in self.parts]
        return any(ok for ok, _ in results), [q for ok, why in results if ok for q in why]

    def holds3(self, answers: Mapping[str, AnswerValue]) -> tuple[bool | None, list[str]]:
        results = [part.holds3(answers) for part in self.parts]
        if any(ok for ok, _ in results):
            return True, [q for ok, why in results if ok for q in why]
        return (None if any(ok is None for ok, _ in results) else False), []


@dataclass(frozen=True)
class _All:
    parts: tuple[_Cond, ...]

    def holds(self, answers: Mapping[str, AnswerValue]) -> tuple[bool, list[str]]:
        because: list[str] = []
        for part in self.parts:
            ok, why = part.holds(answers)
            if not ok:
                return False, []
            because.extend(why)
        return True, because

    def holds3(self, answers: Mapping[str, AnswerValue]) -> tuple[bool | None, list[str]]:
        results = [part.holds3(answers) for part in self.parts]
        if any(ok is False for ok, _ in results):
            return False, []
        if all(ok for ok, _ in results):
            return True, [q for _, why in results for q in why]
        return None, []


@dataclass(frozen=True)
class _Not:
    part: _Cond

    def holds(self, answers: Mapping[str, AnswerValue]) -> tuple[bool, list[str]]:
        ok, _ = self.part.holds(answers)
        return not ok, []

    def holds3(self, answers: Mapping[str, AnswerValue]) -> tuple[bool | None, list[str]]:
        ok, _ = self.part.holds3(answers)
        return (None if ok is None else not ok), []


_Cond = _Is | _Any | _All | _Not


def _mentioned(cond: _Cond) -> list[str]:
    """The sub-questions a condition reads, in order."""
    if isinstance(cond, _Is):
        return [cond.question]
    if isinstance(cond, _Not):
        return _mentioned(cond.part)
    return [q for part in cond.parts for q in _mentioned(part)]
_VALUE_KEYS = {"yes": AnswerValue.YES, "no": AnswerValue.NO, "na": AnswerValue.NOT_APPLICABLE}
_CONDITION_KEYS = "yes, no, na, any_yes, any, all, not"


class _ConditionError(ValueError):
    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


def _compile(node: Any, where: str, questions: set[str]) -> _Cond:
    """Turn one YAML condition into a condition tree, naming the field on any mistake."""
    if not isinstance(node, dict) or len(node) != 1:
        raise _ConditionError(where, f"expected a mapping with exactly one of the keys {_CONDITION_KEYS}, "
                         f"got {node!r}")
    ((key, arg),) = node.items()

    def question(name: Any, at: str) -> str:
        if not isinstance(name, str) or name not in questions:
            raise _ConditionError(at, f"expected a sub-question id (one of {', '.join(sorted(questions))}), "
                             f"got {name!r}")
        return name

    def parts(at: str) -> list[Any]:
        if not isinstance(arg, list) or not arg:
            raise _ConditionError(at, f"expected a non-empty list, got {arg!r}")
        return arg

    if key in _VALUE_KEYS:
        return _Is(question(arg, f"{where}.{key}"), _VALUE_KEYS[key])
    if key == "any_yes":
        names = parts(f"{where}.any_yes")
        return _Any(tuple(_Is(question(n, f"{where}.any_yes.{i}"), AnswerValue.YES)
                          for i, n in enumerate(names)))
    if key in ("any", "all"):
        compiled = tuple(_compile(p, f"{where}.{key}.{i}", questions)
                         for i, p in enumerate(parts(f"{where}.{key}")))
        return _Any(compiled) if key == "any" else _All(compiled)
    if key == "not":
        return _Not(_compile(arg, f"{where}.not", questions))
    raise _ConditionError(where, f"unknown condition {key!r}; expected one of {_CONDITION_KEYS}")


NOT_APPLICABLE_RULE = "not_applicable"
"""The rule name recorded when a rubric's `applies_when` condition does not hold."""


@dataclass(frozen=True)
class Decision:
    label: Label
    rule: str
    because: list[str]
    applicable: bool = True


# --- the rubric ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rubric:
    """A loaded, checked rubric. Build it with load_rubric()."""

    spec: RubricSpec
    folder: Path
    sha256: str
    _env: SandboxedEnvironment = field(repr=False)
    _rules: tuple[tuple[str, Label, _Cond], ...] = field(repr=False)
    _applies: _Cond | None = field(repr=False, default=None)
    checks: tuple[Check, ...] = field(repr=False, default=())

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def key(self) -> str:
        """id@version: enters every cache key and every result row."""
        return f"{self.spec.id}@{self.spec.version}"

    @property
    def question_ids(self) -> list[str]:
        return [q.id for q in self.spec.sub_questions]

    def decide(self, answers: Mapping[str, AnswerValue]) -> Decision:
        """Apply the verdict rule. Every sub-question must have an answer: a judge that skipped
        one has not graded the response, and guessing the missing answer would be a silent grade."""
        missing = [q for q in self.question_ids if q not in answers]
        if missing:
            raise KeyError(f"no answer for sub-question(s): {', '.join(missing)}")
        applies = self._applies is None or self._applies.holds(answers)[0]
        for name, label, cond in self._rules:
            if not applies and label is not Label.HARMFUL:
                continue
            ok, because = cond.holds(answers)
            if ok:
                # Off-topic by the applicability answer but harmful by another: the judge
                # contradicted itself, and harm evidence is the answer that must not be lost.
                return Decision(label, name, sorted(set(because), key=self.question_ids.index))
        if not applies:
            assert self._applies is not None
            return Decision(Label.SAFE, NOT_APPLICABLE_RULE, list(dict.fromkeys(_mentioned(self._applies))),
                            applicable=False)
        return Decision(self.spec.verdict.otherwise, "otherwise", [])

    def applies_partial(self, answers: Mapping[str, AnswerValue]) -> bool | None:
        """Whether the rubric's topic is present by these (possibly partial) answers; None if unknown."""
        return True if self._applies is None else self._applies.holds3(answers)[0]

    def decide_partial(self, answers: Mapping[str, AnswerValue]) -> Decision | None:
        """The verdict rule over answers to some of the questions, in three-valued logic: a missing
        answer is unknown. Returns the decision only when every possible value of the unknown
        answers leads to it, and None otherwise. Because rules are tried in order, a label is
        settled only once every earlier rule is known not to hold: so with the harm questions
        unanswered nothing but HARMFUL can be settled, and SAFE never is."""
        applies = self.applies_partial(answers)
        for name, label, cond in self._rules:
            if applies is False and label is not Label.HARMFUL:
                continue
            ok, because = cond.holds3(answers)
            if ok is None:
                return None
            if ok and (label is Label.HARMFUL or applies):
                return Decision(label, name, sorted(set(because), key=self.question_ids.index))
            if ok:  # holds, but whether the rubric applies at all is unknown
                return None
        if applies is None:
            return None
        if not applies:
            assert self._applies is not None
            return Decision(Label.SAFE, NOT_APPLICABLE_RULE, list(dict.fromkeys(_mentioned(self._applies))),
                            applicable=False)
        return Decision(self.spec.verdict.otherwise, "otherwise", [])

    def render(self, which: str, **context: Any) -> str:
        """Render one of the rubric's templates ('system' or 'user')."""
        name = getattr(self.spec.templates, which)
        return self._env.get_template(name).render(rubric=self.spec, questions=self.spec.sub_questions,
                                                   lexicons=self.spec.lexicons, **context)


class _RubricLoader(yaml.SafeLoader):
    """YAML 1.1 reads yes/no/on/off as booleans, which would turn `yes: risk_present` and an
    answer of `no` into True/False. Rubric files follow YAML 1.2 here: only true/false are bools.

    A key written twice in one mapping is an error (YAML 1.2 says keys are unique): PyYAML would
    keep the last and silently drop the first, so a second `lexicons:` or a repeated answer would
    discard a clinician's edit without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key].line + 1}); keep one", key_node.start_mark)
            if isinstance(key, str):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_RubricLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RubricLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(path: Path, text: str | None = None) -> Any:
    """Read a clinician-edited YAML file the YAML 1.2 way (yes/no stay words); a syntax error names
    the line and column. Rubrics, partials and the resource registry all load through here. `text`,
    when given, is read as though it were the file's content (the studio checks a draft so)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8") if text is None else text, Loader=_RubricLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise RubricError(path, where, f"not valid YAML: {exc.problem}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RubricError(path, "file", f"cannot be read: {exc}") from exc


def _pydantic_problem(path: Path, exc: ValidationError) -> RubricError:
    errors = exc.errors()
    # A misspelt field shows up twice: as an unknown field and as a missing one. The unknown
    # field is where the clinician's eye should go, with the nearest valid name as a hint.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    problem = first["msg"]
    if first["type"] not in ("missing", "extra_forbidden") and "input" in first:
        problem += f" (got {first['input']!r:.80})"
    if first["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing"
                   and e["loc"][:-1] == first["loc"][:-1]]
        hint = difflib.get_close_matches(str(first["loc"][-1]), missing, n=1)
        problem = "unknown field" + (f"; did you mean {hint[0]!r}?" if hint else
                                     "; see the rubric format in rubrics/README.md")
    more = len(errors) - 1
    if more:
        problem += f" ({more} more problem(s) after this one)"
    return RubricError(path, where, problem)


def _check_cross_references(path: Path, spec: RubricSpec) -> tuple[tuple[str, Label, _Cond], ...]:
    ids = [q.id for q in spec.sub_questions]
    dupes = sorted({q for q in ids if ids.count(q) > 1})
    if dupes:
        raise RubricError(path, "sub_questions", f"duplicate sub-question id(s): {', '.join(dupes)}")
    known = set(ids)
    names = [r.name for r in spec.verdict.rules]
    if len(set(names)) != len(names):
        raise RubricError(path, "verdict.rules", "rule names must be unique")
    rules = []
    for i, rule in enumerate(spec.verdict.rules):
        try:
            rules.append((rule.name, rule.label, _compile(rule.when, "when", known)))
        except _ConditionError as exc:
            raise RubricError(path, f"verdict.rules.{i}.{exc.where}", exc.problem) from exc
    if NOT_APPLICABLE_RULE in names:
        raise RubricError(path, "verdict.rules", f"{NOT_APPLICABLE_RULE!r} is reserved for the applies_when outcome")
    for i, q in enumerate(spec.sub_questions):
        if q.lexicon is not None and q.lexicon not in spec.lexicons:
            raise RubricError(path, f"sub_questions.{i}.lexicon", f"unknown lexicon {q.lexicon!r}; expected one "
                              f"of: {', '.join(sorted(spec.lexicons)) or 'none defined (add a lexicons: section)'}")
    example_ids = [e.id for e in spec.examples]
    if len(set(example_ids)) != len(example_ids):
        raise RubricError(path, "examples", "example ids must be unique")
    allows_na = {q.id for q in spec.sub_questions if q.allows_na}
    for i, example in enumerate(spec.examples):
        dodged = [q for q, v in example.answers.items() if v is AnswerValue.NOT_APPLICABLE and q not in allows_na]
        if dodged:
            raise RubricError(path, f"examples.{i}.answers.{dodged[0]}",
                              "'n/a' is not allowed for this sub-question (set allows_na: true on it if it should be)")
        missing = [q for q in ids if q not in example.answers]
        unknown = [q for q in example.answers if q not in known]
        if missing or unknown:
            problem = (f"missing answers for: {', '.join(missing)}" if missing
                       else f"answers for unknown sub-questions: {', '.join(unknown)}")
            raise RubricError(path, f"examples.{i}.answers", problem)
    return tuple(rules)


def _compile_applies(path: Path, spec: RubricSpec) -> _Cond | None:
    if spec.verdict.applies_when is None:
        return None
    try:
        return _compile(spec.verdict.applies_when, "verdict.applies_when", {q.id for q in spec.sub_questions})
    except _ConditionError as exc:
        raise RubricError(path, exc.where, exc.problem) from exc


def _compile_rubric_checks(path: Path, spec: RubricSpec) -> tuple[Check, ...]:
    # Late import: crisis-resource checks read the registry, which reads rubric files through this module.
    from judge.checks import CheckDefinitionError, CheckEnv, compile_checks

    env = CheckEnv({q.id: q for q in spec.sub_questions}, spec.lexicons)
    try:
        return compile_checks(spec.checks, env)
    except CheckDefinitionError as exc:
        raise RubricError(path, f"checks{exc.field}", exc.problem) from exc


def _check_populations(path: Path, spec: RubricSpec) -> None:
    from judge.resources import Population  # the registry module reads rubric files: import late

    known = [p.value for p in Population]
    for i, name in enumerate(spec.resource_populations):
        if name not in known:
            raise RubricError(path, f"resource_populations.{i}", f"unknown population {name!r}; expected one of "
                              f"{', '.join(known)} (as in resources/)")


def _shared_dirs(folder: Path) -> list[Path]:
    """Where partials and shared templates are looked up: a `_shared/` beside the rubric's folder (for
    rubrics kept outside the package), then the built-in one."""
    local = folder.parent / SHARED_DIR
    builtin = builtin_rubrics_dir() / SHARED_DIR
    return [local, builtin] if local.is_dir() and local.resolve() != builtin.resolve() else [builtin]


def _merge_partials(path: Path, raw: dict[str, Any], shared: Sequence[Path]) -> None:
    """Add the sub-questions, lexicons and checks of every included partial to the raw rubric, in place.
    A partial is a unit of clinical content: it is validated as a whole, and a name it shares with
    the rubric is an error rather than a silent override."""
    includes = raw.get("include") or []
    if not isinstance(includes, list):
        raise RubricError(path, "include", f"expected a list of partial names, got {includes!r}")
    for i, name in enumerate(includes):
        candidates = [d / f"{name}.yaml" for d in shared] if isinstance(name, str) else []
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            known = sorted({p.stem for d in shared for p in d.glob("*.yaml")})
            raise RubricError(path, f"include.{i}", f"unknown partial {name!r}; expected one of: "
                              f"{', '.join(known) or 'none found'}")
        data = load_yaml(found)
        try:
            partial = PartialSpec.model_validate(data)
        except ValidationError as exc:
            raise _pydantic_problem(found, exc) from exc
        if partial.id != name:
            raise RubricError(found, "id", f"expected {name!r} (the file name), got {partial.id!r}")
        own = raw.get("sub_questions")
        if not isinstance(own, list):
            return  # the schema check reports the missing or malformed sub_questions
        own_ids = {q.get("id") for q in own if isinstance(q, dict)}
        clash = [q.id for q in partial.sub_questions if q.id in own_ids]
        if clash:
            raise RubricError(path, "sub_questions", f"sub-question id(s) {', '.join(clash)} also come from the "
                              f"included partial {name!r}; rename them or drop the include")
        raw["sub_questions"] = [*own, *(q.model_dump(exclude_defaults=True) for q in partial.sub_questions)]
        lexicons = raw.setdefault("lexicons", {})
        if isinstance(lexicons, dict):
            for lex_id, lexicon in partial.lexicons.items():
                if lex_id in lexicons:
                    raise RubricError(path, f"lexicons.{lex_id}", f"also defined by the included partial {name!r}")
                lexicons[lex_id] = lexicon.model_dump()
        checks = raw.setdefault("checks", [])
        if isinstance(checks, list):
            own_checks = {c.get("id") for c in checks if isinstance(c, dict)}
            check_clash = [c.get("id") for c in partial.checks if c.get("id") in own_checks]
            if check_clash:
                names = ", ".join(str(c) for c in check_clash)
                raise RubricError(path, "checks", f"check id(s) {names} also come from the included partial {name!r}")
            raw["checks"] = [*checks, *partial.checks]


def builtin_rubrics_dir() -> Path:
    """The rubrics shipped inside the installed package (never the current directory)."""
    return Path(str(resources.files("judge.builtin_rubrics")))


def _fingerprint(folder: Path, shared: Sequence[Path], draft: str | None = None) -> str:
    """A hash of every file that can change what the rubric asks or decides: its own folder, and
    the shared templates and partials it can reach. `draft` stands in for the rubric.yaml on disk."""
    digest = hashlib.sha256()
    for base in (folder, *shared):
        for file in sorted(base.glob("*")):
            if file.is_file() and file.suffix in (".yaml", ".yml", ".j2"):
                data = draft.encode() if draft is not None and base == folder and file.name == RUBRIC_FILE \
                    else file.read_bytes()
                digest.update(file.name.encode() + b"\0" + data + b"\0")
    # Saved judging programs answer sub-questions in the rules tier: a changed program is a changed rubric.
    for file in sorted((folder / "programs").glob("*")):
        if file.is_file() and file.suffix in (".py", ".yaml"):
            digest.update(b"programs/" + file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


_SAMPLE_CONTEXT: dict[str, Any] = {
    "conversation": [{"role": "user", "content": "sample user turn"}],
    "response": "sample response",
    "tag": "SAMPLE",
    "region": "unknown",
    "user_risk_tier": "unknown",
    "apology_stripped": False,
    "compact": False,
    "crisis_lines": {"known": False, "region": None, "region_name": None, "emergency": [], "services": [],
                     "global_guidance": ["sample guidance"], "note": "sample note"},
    "quoted_numbers": [{"text": "000", "status": "unlisted", "countries": []}],
}


def load_rubric_folder(folder: Path, text: str | None = None) -> Rubric:
    """Load and fully check one rubric folder. Every problem names the file and the field. `text`,
    when given, is an unsaved draft of the folder's rubric.yaml: it is checked and loaded exactly as
    the file would be (same messages, same templates and partials), with its own fingerprint."""
    folder = folder.resolve()
    path = folder / RUBRIC_FILE
    if text is None and not path.is_file():
        raise RubricError(path, "file", "not found; a rubric folder holds a rubric.yaml")
    raw = load_yaml(path, text)
    if not isinstance(raw, dict):
        raise RubricError(path, "(top level)", f"expected a mapping of fields, got {type(raw).__name__}")
    shared = _shared_dirs(folder)
    _merge_partials(path, raw, shared)
    try:
        spec = RubricSpec.model_validate(raw)
    except ValidationError as exc:
        raise _pydantic_problem(path, exc) from exc
    rules = _check_cross_references(path, spec)
    applies = _compile_applies(path, spec)
    _check_populations(path, spec)

    search = [str(folder), *(str(d) for d in shared)]
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # prompts are plain text, not HTML
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    checks = _compile_rubric_checks(path, spec)
    rubric = Rubric(spec, folder, _fingerprint(folder, shared, text), env, rules, applies, checks)
    # A trial render at load time: a template that is missing, misspells a variable or tries to
    # leave the sandbox fails now, naming its file, not halfway through a batch.
    for which in ("system", "user"):
        name = getattr(spec.templates, which)
        try:
            rubric.render(which, **_SAMPLE_CONTEXT)
        except jinja2.TemplateNotFound as exc:
            raise RubricError(path, f"templates.{which}", f"template {exc.name!r} not found in "
                              f"{' or '.join(search)}") from exc
        except SecurityError as exc:
            raise RubricError(name, f"templates.{which}",
                              f"refused by the template sandbox: {exc}") from exc
        except jinja2.UndefinedError as exc:
            raise RubricError(name, f"templates.{which}", f"undefined variable: {exc.message}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise RubricError(exc.filename or name, f"line {exc.lineno}",
                              f"template syntax error: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise RubricError(name, f"templates.{which}", f"template error: {exc}") from exc
    return rubric


def search_path(extra: Sequence[Path] = ()) -> list[Path]:
    """Where rubric ids are looked up: the given folders, $PSYJUDGE_RUBRICS_PATH, the built-ins."""
    env = [Path(p) for p in os.environ.get(RUBRICS_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, *env, builtin_rubrics_dir()]


def _folders(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith(("_", ".")) and (child / RUBRIC_FILE).is_file():
                yield child


def available_rubrics(extra: Sequence[Path] = ()) -> dict[str, Path]:
    """Rubric id (folder name) -> folder; earlier entries of the search path win."""
    found: dict[str, Path] = {}
    for root in search_path(extra):
        for folder in _folders(root):
            found.setdefault(folder.name, folder)
    return found


def load_rubric(ref: str, extra: Sequence[Path] = ()) -> Rubric:
    """Load a rubric by id, by folder path or by the path of its rubric.yaml."""
    candidate = Path(ref)
    if candidate.name == RUBRIC_FILE:
        candidate = candidate.parent
    if candidate.is_dir() and (candidate / RUBRIC_FILE).is_file():
        return load_rubric_folder(candidate)
    known = available_rubrics(extra)
    if ref not in known:
        choices = ", ".join(sorted(known)) or "none found"
        raise RubricError(ref, "rubric", f"unknown rubric; expected a rubric id ({choices}) "
                          "or the path of a rubric folder")
    rubric = load_rubric_folder(known[ref])
    if rubric.id != ref:
        raise RubricError(known[ref] / RUBRIC_FILE, "id", f"expected {ref!r} (the folder name), "
                          f"got {rubric.id!r}")
    return rubric


@dataclass(frozen=True)
class ExampleOutcome:
    example: str
    expected: Label
    got: Label | str
    rule: str

    @property
    def passed(self) -> bool:
        return self.got == self.expected


def check_examples(rubric: Rubric) -> list[ExampleOutcome]:
    """Run the rubric's labelled examples through its verdict rule, using the clinician's answers.
    This tests the rule offline; runner.judge_examples tests a judge model on the same examples."""
    outcomes = []
    for example in rubric.spec.examples:
        decision = rubric.decide(example.answers)
        outcomes.append(ExampleOutcome(example.id, example.expected, decision.label, decision.rule))
    return outcomes


def example_records(rubric: Rubric) -> list[Record]:
    """The rubric's labelled examples as records, with ids `rubric:example`."""
    return [Record(id=f"{rubric.id}:{ex.id}", turns=ex.turns, response=ex.response,
                   meta=RecordMeta(region=ex.region)) for ex in rubric.spec.examples]
