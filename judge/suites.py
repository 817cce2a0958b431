"""Benchmark suites as data: the prompts a candidate chatbot is run on, and what a safe chatbot does.

A suite is a folder holding `suite.yaml` (its card: id, version, what it covers, where its prompts come
from) and one or more case files, each a YAML `cases:` list. A case is one of three kinds:

- prompt: a single user message;
- script: fixed user turns, the target answering each in turn;
- persona: a description a user simulator plays for a number of turns (optionally with a fixed opening).

Every case says what the chatbot is expected to do (`answer`, `refuse` or `redirect`), so a run measures
both harm (it helped with an unsafe request) and over-refusal (it refused a safe one).

Public prompt sets are read through adapters (`xstest:PATH`, `simplesafetytests:PATH`). A row an adapter
cannot use is kept in `Suite.skipped` with its line and the reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationError, model_validator

from judge.rubrics import DefinitionError, RubricError, load_yaml
from judge.schema import Identifier, Strict, sha256_json

CARD_FILE = "suite.yaml"


class SuiteError(DefinitionError):
    """A suite that cannot be used: the message names the file, the case (id or index) and the field."""


class Expected(StrEnum):
    """What a safe chatbot does with the case."""

    ANSWER = "answer"  # a safe request: refusing it is over-refusal
    REFUSE = "refuse"  # an unsafe request: helping with it is harm
    REDIRECT = "redirect"  # unsafe, and the right response hands the user to human help (crisis line, clinician)


class CaseKind(StrEnum):
    PROMPT = "prompt"
    SCRIPT = "script"
    PERSONA = "persona"


class _FieldProblem(ValueError):
    """Raised inside a validator so that the loader can name the field at fault, not just the case."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field_name, self.problem = field_name, problem
        super().__init__(f"{field_name}: {problem}")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return text


def _region_code(code: str) -> str:
    import phonenumbers

    if re.fullmatch(r"[A-Z]{2}", code) and code in phonenumbers.SUPPORTED_REGIONS:
        return code
    from judge.resources import normalise_region  # the registry module is heavier: only on a bad code

    hint = normalise_region(code)
    raise ValueError(f"expected an ISO 3166-1 alpha-2 region code in capitals (GB, US, AU...), got {code!r}"
                     + (f"; did you mean {hint!r}?" if hint else ""))


def _plain_file_name(name: str) -> str:
    if name in ("", ".", "..") or re.search(r"[/\\\x00-\x1f]", name):
        raise ValueError(f"expected a file name in the suite's folder, without a folder part; got {name!r}")
    return name


Text = Annotated[str, AfterValidator(_not_blank)]
CaseId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,80}$")]
Category = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(:[a-z0-9][a-z0-9_.-]*)?$")]
Region = Annotated[str, AfterValidator(_region_code)]
# A plain file name (no folder part: a card cannot reach outside its folder). A suite folder's case files
# are YAML (checked on load); an adapted set names its source file here.
CaseFileName = Annotated[str, AfterValidator(_plain_file_name)]
Version = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+(\.\d+)?$")]

MAX_TURNS = 20

# Which of the optional text fields each kind uses; a field of another kind being set is an error, so a
# case cannot silently carry a prompt that no run will send.
_KIND_FIELDS: dict[CaseKind, tuple[str, ...]] = {
    CaseKind.PROMPT: ("prompt",),
    CaseKind.SCRIPT: ("user_turns",),
    CaseKind.PERSONA: ("persona", "opening", "turns"),
}
_KIND_REQUIRED: dict[CaseKind, tuple[str, ...]] = {
    CaseKind.PROMPT: ("prompt",),
    CaseKind.SCRIPT: ("user_turns",),
    CaseKind.PERSONA: ("persona", "turns"),
}
_ALL_KIND_FIELDS = ("prompt", "user_turns", "persona", "opening", "turns")


class SuiteCase(Strict):
    """One case of a suite: what the target is sent, and what a safe target does with it."""

    id: CaseId
    kind: CaseKind
    expected: Expected
    category: Category = Field(description="The topic: a rubric id (self_harm, eating_disorders, "
                               "substance_misuse), over_refusal, or source:type for adapted sets.")
    region: Region | None = Field(default=None, description="The user's region; the card's when absent.")
    note: str = Field(default="", description="What the case tests and what a good answer does.")
    prompt: Text | None = None
    user_turns: list[Text] = Field(default_factory=list, max_length=MAX_TURNS)
    persona: Text | None = None
    opening: Text | None = None
    turns: int | None = Field(default=None, ge=1, le=MAX_TURNS, description="User turns the simulator plays, "
                              "the opening included.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> SuiteCase:
        used = ", ".join(_KIND_FIELDS[self.kind])
        present = {name for name in _ALL_KIND_FIELDS
                   if (bool(getattr(self, name)) if name == "user_turns" else getattr(self, name) is not None)}
        # A missing field first: with a wrong kind, what the kind needs is the more useful thing to name.
        for name in _KIND_REQUIRED[self.kind]:
            if name not in present:
                raise _FieldProblem(name, f"required for a {self.kind.value} case")
        for name in _ALL_KIND_FIELDS:
            if name in present and name not in _KIND_FIELDS[self.kind]:
                raise _FieldProblem(name, f"not used by a {self.kind.value} case (it sets only {used})")
        if self.kind is CaseKind.SCRIPT and len(self.user_turns) < 2:
            raise _FieldProblem("user_turns", "a script has at least 2 user turns; a single message is a prompt case")
        return self

    @property
    def is_unsafe(self) -> bool:
        """True when helping would be harm: refuse and redirect cases both count toward the harm rate."""
        return self.expected in (Expected.REFUSE, Expected.REDIRECT)


class SuiteCard(Strict):
    """The contents of a suite.yaml."""

    id: Identifier
    version: Version
    title: Text
    description: Text = Field(description="What the suite covers and what it does not.")
    owner: Text
    license: Text = Field(description="The licence of the prompts: the project's, or the source's for adapted sets.")
    region: Region | None = Field(default=None, description="The region of cases that name none.")
    source: Text = Field(description="Where the prompts come from.")
    files: list[CaseFileName] = Field(default_factory=lambda: ["cases.yaml"], min_length=1)
    rubrics: list[Identifier] = Field(default_factory=list, description="The rubrics that judge the answers when "
                                      "`psyjudge run` is given none; every built-in rubric when empty.")


class _CaseFile(Strict):
    cases: list[SuiteCase] = Field(min_length=1)


@dataclass(frozen=True)
class SkippedRow:
    """A row of an adapted file that could not be used: its line (the header is line 1) and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class Suite:
    """A loaded, checked suite. Build it with load_suite()."""

    card: SuiteCard
    cases: list[SuiteCase]
    path: Path | None = None
    skipped: list[SkippedRow] = field(default_factory=list)
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            # Built in memory: the content is what identifies it.
            digest = sha256_json({"card": self.card.model_dump(mode="json"),
                                  "cases": [c.model_dump(mode="json") for c in self.cases]})
            object.__setattr__(self, "sha256", digest)

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def key(self) -> str:
        """id@version: written beside every result of a run on this suite."""
        return f"{self.card.id}@{self.card.version}"

    def counts(self) -> dict[str, dict[str, int]]:
        """Cases by kind and by expected behaviour, every value listed (zero included)."""
        return {"kind": {k.value: sum(c.kind is k for c in self.cases) for k in CaseKind},
                "expected": {e.value: sum(c.expected is e for c in self.cases) for e in Expected}}


# --- errors ---------------------------------------------------------------------------------------


def _case_label(raw: Any, index: int) -> str:
    """`cases.3 (id 'x')` when the raw case has an id, so a clinician finds it by either."""
    cases = raw.get("cases") if isinstance(raw, dict) else None
    case = cases[index] if isinstance(cases, list) and 0 <= index < len(cases) else None
    case_id = case.get("id") if isinstance(case, dict) else None
    return f"cases.{index} (id {case_id!r})" if isinstance(case_id, str) else f"cases.{index}"


def _validation_problem(path: Path, raw: Any, exc: ValidationError) -> SuiteError:
    errors = exc.errors()
    # A misspelt key shows up as unknown and as missing: the unknown one is where the eye should go.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc: list[str | int] = list(first["loc"])
    cause = first.get("ctx", {}).get("error")
    problem = first["msg"]
    if isinstance(cause, _FieldProblem):
        loc.append(cause.field_name)
        problem = cause.problem
    elif first["type"] == "extra_forbidden":
        problem = "unknown field; see the suite format in suites/README.md"
    elif first["type"] != "missing" and "input" in first:
        problem += f" (got {first['input']!r:.80})"
    parts = [str(p) for p in loc]
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        parts = [_case_label(raw, loc[1]), *parts[2:]]
    more = len(errors) - 1
    if more:
        problem += f" ({more} more problem(s) after this one)"
    return SuiteError(path, ".".join(parts) or "(top level)", problem)


def _read_yaml(path: Path) -> Any:
    try:
        return load_yaml(path)
    except RubricError as exc:  # the shared YAML reader speaks of rubrics; the file is what matters
        raise SuiteError(exc.file, exc.field, exc.problem) from exc


# --- folders --------------------------------------------------------------------------------------


_M = TypeVar("_M", bound=BaseModel)


def _read_model(path: Path, model: type[_M], expected: str) -> _M:
    """A YAML file read into `model`; SuiteError names the file and the field at fault."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise SuiteError(path, "(top level)", f"expected {expected}, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_problem(path, raw, exc) from exc


def builtin_suites_dir() -> Path:
    """The suites shipped inside the installed package, or the source folder in a checkout that has
    not been reinstalled since the suites were added (never the current directory)."""
    try:
        return Path(str(resources.files("judge.builtin_suites")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "suites"


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [child for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(("_", ".")) and (child / CARD_FILE).is_file()]


def available_suites(directory: Path | None = None) -> list[str]:
    """The suite ids (folder names) in a folder of suites; the built-ins by default."""
    return [f.name for f in _folders(directory if directory is not None else builtin_suites_dir())]


def load_suite_folder(folder: Path) -> Suite:
    """Load and check one suite folder. Every problem names the file, the case and the field."""
    folder = folder.resolve()
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise SuiteError(card_path, "file", f"not found; a suite folder holds a {CARD_FILE}")
    card = _read_model(card_path, SuiteCard, "a mapping of fields")
    if len(set(card.files)) != len(card.files) or CARD_FILE in card.files:
        raise SuiteError(card_path, "files", f"each case file once, and not {CARD_FILE} itself")
    not_yaml = [name for name in card.files if not name.endswith((".yaml", ".yml"))]
    if not_yaml:
        raise SuiteError(card_path, "files", f"{not_yaml[0]}: case files of a suite folder are YAML; read a CSV "
                         f"prompt set through its adapter ({', '.join(f'{a}:PATH' for a in ADAPTERS)})")
    # A case file in the folder that the card does not list would never run: refuse it rather than skip it.
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")
                   and p.name != CARD_FILE and p.name not in card.files)
    if stray:
        raise SuiteError(card_path, "files", f"{', '.join(stray)} in the folder but not listed; list it or remove it")

    digest = hashlib.sha256(CARD_FILE.encode() + b"\0" + card_path.read_bytes() + b"\0")
    cases: list[SuiteCase] = []
    first_seen: dict[str, str] = {}
    for name in card.files:
        path = folder / name
        if not path.is_file():
            raise SuiteError(card_path, "files", f"{name} not found in {folder}")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        parsed = _read_model(path, _CaseFile, "a mapping with a cases: list")
        for i, case in enumerate(parsed.cases):
            here = f"{path.name} cases.{i}"
            if case.id in first_seen:
                raise SuiteError(path, f"cases.{i} (id {case.id!r}).id",
                                 f"duplicate case id: also {first_seen[case.id]}")
            first_seen[case.id] = here
            if case.region is None and card.region is not None:
                case = case.model_copy(update={"region": card.region})
            cases.append(case)
    return Suite(card, cases, folder, [], digest.hexdigest())


# --- adapters for public prompt sets --------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[int], list[SkippedRow]]:
    """The rows of a CSV as strings, their line numbers (header = line 1; a quoted field spanning lines
    counts as one), and the rows pandas could not split into the header's columns."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Blank lines stay rows (and are skipped below with a reason), so numbering stays exact.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                                on_bad_lines="warn", skip_blank_lines=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SuiteError(path, "file", f"cannot be read as CSV: {exc}") from exc
    bad: list[SkippedRow] = []
    for warning in caught:
        for line, why in re.findall(r"Skipping line (\d+): ([^\n]+)", str(warning.message)):
            bad.append(SkippedRow(int(line), f"malformed row: {why}"))
    bad_lines = {b.line for b in bad}
    lines: list[int] = []
    line = 1
    while len(lines) < len(frame):
        line += 1
        if line not in bad_lines:
            lines.append(line)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, lines, bad


def _row_id(raw: str, line: int) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", raw.strip().lower()).strip("-_.")[:81]
    return slug or f"row-{line}"


def _adapted(adapter: str, path: Path, title: str, description: str, rows: list[dict[str, Any]],
             skipped: list[SkippedRow]) -> Suite:
    card = SuiteCard(id=adapter, version="1.0", title=title, description=description,
                     owner="the authors of the source set", license="from the source; see its licence",
                     source=str(path), files=[path.name])
    cases: list[SuiteCase] = []
    first_seen: dict[str, int] = {}
    for row in rows:
        line = row.pop("line")
        if row["id"] in first_seen:
            skipped.append(SkippedRow(line, f"duplicate id {row['id']!r} (first at line {first_seen[row['id']]})"))
            continue
        try:
            case = SuiteCase.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            skipped.append(SkippedRow(line, f"{where}: {first['msg']}"))
            continue
        first_seen[case.id] = line
        cases.append(case)
    skipped.sort(key=lambda s: s.line)
    digest = hashlib.sha256(adapter.encode() + b"\0" + path.read_bytes()).hexdigest()
    return Suite(card, cases, path, skipped, digest)


# XSTest's labels: a safe prompt should be answered; an unsafe (contrast) prompt should be refused.
_XSTEST_LABELS = {"safe": Expected.ANSWER, "unsafe": Expected.REFUSE}
# Column layouts: the official v2 file, and the labelled development copy (label and type renamed).
_XSTEST_LAYOUTS = (("label", "type"), ("xstest_label", "category"))


def load_xstest(path: Path) -> Suite:
    """XSTest prompts (v2: id, prompt, type, label, focus, note; or a copy with the label in
    `xstest_label` and the type in `category`). safe -> answer, unsafe -> refuse; category xstest:<type>."""
    frame, lines, skipped = _read_csv(path)
    layout = next((lt for lt in _XSTEST_LAYOUTS if {"prompt", *lt} <= set(frame.columns)), None)
    if layout is None:
        raise SuiteError(path, "columns", "expected XSTest columns prompt, type, label (v2) or prompt, category, "
                         f"xstest_label; found {', '.join(frame.columns)}")
    label_col, type_col = layout
    rows: list[dict[str, Any]] = []
    for line, (_, row) in zip(lines, frame.iterrows(), strict=True):
        label = row[label_col].strip().lower()
        if not row["prompt"].strip():
            skipped.append(SkippedRow(line, "empty prompt"))
        elif label not in _XSTEST_LABELS:
            skipped.append(SkippedRow(line, f"unknown label {row[label_col]!r} in {label_col}; "
                                            "expected safe or unsafe"))
        elif not _slug(row[type_col]):
            skipped.append(SkippedRow(line, f"empty {type_col} (the XSTest prompt type)"))
        else:
            note = "; ".join(f"{k}: {row[k].strip()}" for k in ("focus", "note") if k in row and row[k].strip())
            rows.append({"line": line, "id": _row_id(row.get("id", ""), line), "kind": CaseKind.PROMPT,
                         "expected": _XSTEST_LABELS[label], "category": f"xstest:{_slug(row[type_col])}",
                         "note": note, "prompt": row["prompt"]})
    return _adapted("xstest", path, f"XSTest prompts ({path.name})",
                    "XSTest's exaggerated-safety prompts: safe prompts that look unsafe (answer) and their unsafe "
                    "contrasts (refuse). General-purpose, English, not specific to mental health.", rows, skipped)


def load_simplesafetytests(path: Path) -> Suite:
    """SimpleSafetyTests (id, harm_area, counter, category, prompts_final or prompt): every prompt is
    unsafe -> refuse; category from the harm area, slugified."""
    frame, lines, skipped = _read_csv(path)
    prompt_col = next((c for c in ("prompts_final", "prompt") if c in frame.columns), None)
    if prompt_col is None or "harm_area" not in frame.columns:
        raise SuiteError(path, "columns", "expected SimpleSafetyTests columns id, harm_area, counter, category, "
                         f"prompts_final (or prompt); found {', '.join(frame.columns)}")
    rows: list[dict[str, Any]] = []
    for line, (_, row) in zip(lines, frame.iterrows(), strict=True):
        if not row[prompt_col].strip():
            skipped.append(SkippedRow(line, "empty prompt"))
        elif not _slug(row["harm_area"]):
            skipped.append(SkippedRow(line, "empty harm_area"))
        else:
            note = f"{row['harm_area'].strip()}" + (f"; {row['category'].strip()}" if row.get("category", "").strip()
                                                    else "")
            rows.append({"line": line, "id": _row_id(row.get("id", ""), line), "kind": CaseKind.PROMPT,
                         "expected": Expected.REFUSE, "category": _slug(row["harm_area"]), "note": note,
                         "prompt": row[prompt_col]})
    return _adapted("simplesafetytests", path, f"SimpleSafetyTests prompts ({path.name})",
                    "SimpleSafetyTests: clearly unsafe prompts across five harm areas, every one to be refused. "
                    "No safe prompts, so it measures harm and not over-refusal.", rows, skipped)


ADAPTERS: dict[str, Callable[[Path], Suite]] = {
    "xstest": load_xstest,
    "simplesafetytests": load_simplesafetytests,
}
"""Public prompt-set formats, by the prefix that names them: `xstest:PATH`."""


def load_suite(ref: str, directory: Path | None = None) -> Suite:
    """Load a suite: a built-in id (or an id in `directory`), a folder holding suite.yaml (or that file's
    path), or an adapted public set as `xstest:PATH` / `simplesafetytests:PATH`."""
    prefix, sep, rest = ref.partition(":")
    if sep and prefix in ADAPTERS:
        if not rest.strip():
            raise SuiteError(ref, "suite", f"expected {prefix}:PATH, the path of the CSV file")
        return ADAPTERS[prefix](Path(rest).expanduser())
    candidate = Path(ref).expanduser()
    if candidate.name == CARD_FILE:
        candidate = candidate.parent
    if candidate.is_dir() and (candidate / CARD_FILE).is_file():
        return load_suite_folder(candidate)
    root = directory if directory is not None else builtin_suites_dir()
    known = available_suites(root)
    if ref not in known:
        adapters = ", ".join(f"{a}:PATH" for a in ADAPTERS)
        raise SuiteError(ref, "suite", f"unknown suite; expected a suite id ({', '.join(known) or 'none found'}), "
                         f"a folder holding {CARD_FILE}, or {adapters}")
    suite = load_suite_folder(root / ref)
    if suite.card.id != ref:
        raise SuiteError(root / ref / CARD_FILE, "id", f"expected {ref!r} (the folder name), got {suite.card.id!r}")
    return suite
