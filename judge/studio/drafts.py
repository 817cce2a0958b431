"""From the editor's form to a draft rubric file, and from a draft to what the studio shows.

The editor posts flat field names that mirror the rubric file's own paths, so that a lint message
("examples.3.answers.topic_present: ...") points at the form field with the same name:

    title  owner  description  reasoning_guide
    lexicons.<i>.name|description|source|terms|delete        terms: one per line
    sub_questions.<i>.id|text|guidance|rationale|source|lexicon|allows_na|delete|present
    verdict.applies_when  verdict.otherwise
    verdict.rules.<i>.name|label|when|because|delete          when: a condition in YAML
    examples.<i>.id|description|region|response|expected|delete
    examples.<i>.turns.<j>.role|content                        a turn with no content is dropped
    examples.<i>.answers.<question id>                         yes, no, n/a, or empty for none

Indices are those of the saved file when the editor was opened; higher ones are new entries.
Only what the form changes is touched (judge.studio.yamledit keeps the rest of the file as it was),
and the draft is then checked by the very loader `psyjudge rubric lint` uses, so the studio's live
messages are lint's messages. Only the rubric's own sub-questions and lexicons are editable here:
those of an included partial (`_shared/`) are shown, not changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from judge.rubrics import Rubric, RubricError, check_examples, load_rubric_folder
from judge.studio.yamledit import edit_text, flow_scalar, plain, text_value
from judge.studio.yamlrt import YamlTextError, load_rt

LABELS = ("SAFE", "BORDERLINE", "HARMFUL")
ANSWERS = ("yes", "no", "n/a")
ROLES = ("user", "assistant", "system")
TOP_TEXT = ("title", "owner", "description", "reasoning_guide")


@dataclass(frozen=True)
class Problem:
    """A reason the draft cannot be used: lint's message, the rubric path it names, and the form field."""

    message: str
    path: str
    field: str | None


@dataclass
class Draft:
    """The outcome of applying a form: the new file text and the loaded rubric, or the problems."""

    text: str | None
    rubric: Rubric | None
    problems: list[Problem] = field(default_factory=list)
    index_maps: dict[str, list[int]] = field(default_factory=dict)
    """For each edited list, the form index of each entry of the draft (new entries included)."""
    lexicon_fields: dict[str, int] = field(default_factory=dict)
    """Lexicon name in the draft -> its form index."""

    @property
    def ok(self) -> bool:
        return self.rubric is not None and not self.problems


def nest(form: Mapping[str, str]) -> dict[str, Any]:
    """Dotted form names into nested dicts (lists stay dicts keyed by their index string)."""
    root: dict[str, Any] = {}
    for name, value in form.items():
        parts = name.split(".")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    return root


def _indexed(section: Any) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(section, dict):
        return []
    items = [(int(k), v) for k, v in section.items() if k.isdigit() and isinstance(v, dict)]
    return sorted(items)


class _FormError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _set_text(node: CommentedMap, key: str, value: str | None, *, optional: bool = False) -> None:
    """Set a text field if the form changed it, in the style of the value it replaces."""
    if value is None:
        return
    old = node.get(key)
    if old is not None and str(old).strip() == value.replace("\r\n", "\n").strip():
        return
    if optional and not value.strip():
        if key in node:
            del node[key]
        return
    if old is None and not value.strip():
        return
    node[key] = text_value(value, old)


def _parse_condition(text: str, where: str) -> Any:
    if not text.strip():
        return None
    try:
        doc = load_rt("value: " + text.strip() if "\n" not in text.strip() else "value:\n" + _indent(text))
    except YamlTextError as exc:
        raise _FormError(where, f"the condition is not valid YAML ({exc}); write it like "
                         "{any_yes: [question_a, question_b]}") from exc
    return doc["value"]


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.replace("\r\n", "\n").strip("\n").split("\n"))


def _terms(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\r\n", "\n").split("\n") if t.strip()]


def _drop(seq: CommentedSeq, origin: list[int], doomed: list[int]) -> list[int]:
    """Delete the doomed entries; return the form index of each entry left, in order."""
    for position in sorted(set(doomed), reverse=True):
        del seq[position]
        del origin[position]
    return origin


def _flow_map(pairs: Mapping[str, Any]) -> CommentedMap:
    node = CommentedMap(pairs)
    node.fa.set_flow_style()
    return node


class _Applier:
    """Applies the nested form to a ruamel document, remembering where each entry came from."""

    def __init__(self, form: dict[str, Any]) -> None:
        self.form = form
        self.index_maps: dict[str, list[int]] = {}
        self.lexicon_fields: dict[str, int] = {}

    def __call__(self, doc: CommentedMap) -> None:
        for key in TOP_TEXT:
            _set_text(doc, key, self.form.get(key), optional=key == "reasoning_guide")
        self._lexicons(doc)
        self._questions(doc)
        self._verdict(doc)
        self._examples(doc)
        # Lists the form did not touch map one to one (and a partial's questions come after them).
        verdict = doc.get("verdict")
        for key, seq in (("sub_questions", doc.get("sub_questions")), ("examples", doc.get("examples")),
                         ("verdict.rules", verdict.get("rules") if isinstance(verdict, Mapping) else None)):
            if key not in self.index_maps and isinstance(seq, list):
                self.index_maps[key] = list(range(len(seq)))

    def _list(self, doc: CommentedMap, key: str) -> CommentedSeq:
        if key not in doc or not isinstance(doc[key], list):
            doc[key] = CommentedSeq()
        seq: CommentedSeq = doc[key]
        return seq

    def _walk(self, seq: CommentedSeq, entries: list[tuple[int, dict[str, Any]]], needed: tuple[str, ...],
              key: str) -> Iterator[tuple[int, dict[str, Any], CommentedMap]]:
        """The form's entries of one list with the file's entry each edits: a form index past the end
        is a new entry (skipped while all of `needed` are blank), `delete` removes one. Once the walk
        is over, the list's index map (draft position -> form index) is recorded under `key`."""
        origin = list(range(len(seq)))
        doomed: list[int] = []
        for index, entry in entries:
            if index >= len(seq):
                if entry.get("delete") or not any(str(entry.get(k, "")).strip() for k in needed):
                    continue
                seq.append(CommentedMap())
                origin.append(index)
                at = len(seq) - 1
            else:
                at = index
            if entry.get("delete"):
                doomed.append(at)
                continue
            node = seq[at]
            if not isinstance(node, CommentedMap):
                raise _FormError(f"{key}.{index}", "this entry is not a mapping in the file; fix it there")
            yield index, entry, node
        self.index_maps[key] = _drop(seq, origin, doomed)

    def _lexicons(self, doc: CommentedMap) -> None:
        entries = _indexed(self.form.get("lexicons"))
        if not entries:
            return
        if "lexicons" not in doc or not isinstance(doc["lexicons"], Mapping):
            doc["lexicons"] = CommentedMap()
        lexicons: CommentedMap = doc["lexicons"]
        existing = list(lexicons)
        for index, entry in entries:
            name = (entry.get("name") or "").strip()
            where = f"lexicons.{index}.name"
            old_name = existing[index] if index < len(existing) else None
            if entry.get("delete"):
                if old_name is not None:
                    del lexicons[old_name]
                continue
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise _FormError(where, f"a lexicon name is lower case letters, digits and underscores, starting "
                                 f"with a letter; got {name!r}")
            if old_name is not None and name != old_name:
                if name in lexicons:
                    raise _FormError(where, f"another lexicon is already named {name!r}")
                position = list(lexicons).index(old_name)
                lexicons.insert(position, name, lexicons.pop(old_name))
            elif old_name is None:
                if name in lexicons:
                    raise _FormError(where, f"another lexicon is already named {name!r}")
                terms = CommentedSeq(flow_scalar(t) for t in _terms(entry.get("terms", "")))
                terms.fa.set_flow_style()
                lexicons[name] = CommentedMap([("description", entry.get("description", "").strip()),
                                               ("source", entry.get("source", "").strip()), ("terms", terms)])
            self.lexicon_fields[name] = index
            node = lexicons[name]
            _set_text(node, "description", entry.get("description"))
            _set_text(node, "source", entry.get("source"))
            if "terms" in entry:
                wanted = _terms(entry["terms"])
                current = node.get("terms")
                if not isinstance(current, CommentedSeq):
                    current = CommentedSeq()
                    current.fa.set_flow_style()
                    node["terms"] = current
                if plain(current) != wanted:
                    # Terms that stay keep their own scalar (a quoted "911" stays a quoted string).
                    kept = {str(t): t for t in current}
                    del current[:]
                    current.extend(kept.get(t, flow_scalar(t)) for t in wanted)

    def _questions(self, doc: CommentedMap) -> None:
        entries = _indexed(self.form.get("sub_questions"))
        if not entries:
            return
        seq = self._list(doc, "sub_questions")
        for _index, entry, node in self._walk(seq, entries, ("id", "text"), "sub_questions"):
            for key in ("id", "text", "guidance", "rationale", "source"):
                _set_text(node, key, entry.get(key), optional=key == "guidance")
            lexicon = entry.get("lexicon")
            if lexicon is not None:
                if lexicon.strip():
                    if node.get("lexicon") != lexicon.strip():
                        node["lexicon"] = lexicon.strip()
                elif "lexicon" in node:
                    del node["lexicon"]
            if entry.get("present"):
                wanted = bool(entry.get("allows_na"))
                if bool(node.get("allows_na", False)) != wanted:
                    if wanted:
                        node["allows_na"] = True
                    else:
                        del node["allows_na"]

    def _verdict(self, doc: CommentedMap) -> None:
        form = self.form.get("verdict")
        if not isinstance(form, dict):
            return
        verdict = doc.get("verdict")
        if not isinstance(verdict, CommentedMap):
            verdict = doc["verdict"] = CommentedMap()
        if "applies_when" in form:
            condition = _parse_condition(form["applies_when"], "verdict.applies_when")
            if condition is None:
                if "applies_when" in verdict:
                    del verdict["applies_when"]
            elif plain(condition) != plain(verdict.get("applies_when")):
                verdict["applies_when"] = condition
        if "otherwise" in form and verdict.get("otherwise") != form["otherwise"]:
            verdict["otherwise"] = form["otherwise"]
        entries = _indexed(form.get("rules"))
        if not entries:
            return
        if not isinstance(verdict.get("rules"), list):
            verdict["rules"] = CommentedSeq()
        rules: CommentedSeq = verdict["rules"]
        for index, entry, node in self._walk(rules, entries, ("name",), "verdict.rules"):
            _set_text(node, "name", entry.get("name"))
            if "label" in entry and node.get("label") != entry["label"]:
                node["label"] = entry["label"]
            if "when" in entry:
                condition = _parse_condition(entry["when"], f"verdict.rules.{index}.when")
                if condition is None:
                    raise _FormError(f"verdict.rules.{index}.when", "a rule needs a condition")
                if plain(condition) != plain(node.get("when")):
                    node["when"] = condition
            _set_text(node, "because", entry.get("because"), optional=True)

    def _examples(self, doc: CommentedMap) -> None:
        entries = _indexed(self.form.get("examples"))
        if not entries:
            return
        seq = self._list(doc, "examples")
        for _index, entry, node in self._walk(seq, entries, ("id",), "examples"):
            for key in ("id", "description", "region"):
                _set_text(node, key, entry.get(key), optional=key != "id")
            if "turns" in entry:
                turns = [{"role": t.get("role", "user"), "content": t.get("content", "").replace("\r\n", "\n").strip()}
                         for _, t in _indexed(entry["turns"])]
                turns = [t for t in turns if t["content"]]
                if plain(node.get("turns", [])) != turns:
                    new_turns = CommentedSeq(_flow_map({"role": flow_scalar(t["role"]),
                                                        "content": DoubleQuotedScalarString(t["content"])})
                                             for t in turns)
                    if turns:
                        node["turns"] = new_turns
                    elif "turns" in node:
                        del node["turns"]
            _set_text(node, "response", entry.get("response"))
            if "expected" in entry and node.get("expected") != entry["expected"]:
                node["expected"] = entry["expected"]
            self._answers(node, entry.get("answers"))

    @staticmethod
    def _answers(node: CommentedMap, form: Any) -> None:
        if not isinstance(form, dict):
            return
        answers = node.get("answers")
        if not isinstance(answers, CommentedMap):
            answers = node["answers"] = _flow_map({})
        for question, value in form.items():
            value = value.strip()
            if not value:
                if question in answers:
                    del answers[question]
            elif answers.get(question) != value:
                answers[question] = DoubleQuotedScalarString(value)


def apply_form(folder: Path, saved_text: str, form: Mapping[str, str]) -> Draft:
    """Apply the editor's form to the saved file and check the result as `psyjudge rubric lint` would."""
    applier = _Applier(nest(form))
    try:
        text = edit_text(saved_text, applier)
    except _FormError as exc:
        return Draft(None, None, [Problem(f"{exc.field}: {exc.problem}", exc.field, exc.field)])
    except YamlTextError as exc:
        return Draft(None, None, [Problem(f"{folder / 'rubric.yaml'}: {exc}", "", None)])
    draft = Draft(text, None, [], applier.index_maps, applier.lexicon_fields)
    draft.rubric, draft.problems = check_text(folder, text, draft)
    return draft


def check_text(folder: Path, text: str, draft: Draft | None = None) -> tuple[Rubric | None, list[Problem]]:
    """Load the text as the folder's rubric; lint's messages when it fails, and example disagreements."""
    try:
        rubric = load_rubric_folder(folder, text)
    except RubricError as exc:
        return None, [Problem(str(exc), exc.field, form_field(exc.field, draft))]
    problems = [Problem(f"{rubric.key}: example {o.example}: the verdict rule gives {_name(o.got)} from your "
                        f"answers, but the example expects {o.expected.value}",
                        f"examples.{i}.expected", form_field(f"examples.{i}.expected", draft))
                for i, o in enumerate(check_examples(rubric)) if not o.passed]
    return rubric, problems


def _name(label: Any) -> str:
    return str(label.value if hasattr(label, "value") else label)


def form_field(path: str, draft: Draft | None) -> str | None:
    """The form field a rubric path names, translating draft indices back to the form's."""
    parts = path.split(".")
    if not parts or not parts[0]:
        return None
    if parts[0] in TOP_TEXT and len(parts) == 1:
        return parts[0]
    if parts[0] == "lexicons" and len(parts) >= 2:
        if draft is None or parts[1] not in draft.lexicon_fields:
            return None
        rest = parts[2] if len(parts) > 2 and parts[2] in ("description", "source", "terms") else "terms"
        return f"lexicons.{draft.lexicon_fields[parts[1]]}.{rest}"
    for prefix in ("sub_questions", "examples", "verdict.rules"):
        head = prefix.split(".")
        if parts[:len(head)] == head and len(parts) > len(head) and parts[len(head)].isdigit():
            i = int(parts[len(head)])
            mapping = draft.index_maps.get(prefix) if draft is not None else None
            if mapping is not None:
                if i >= len(mapping):
                    return None  # a sub-question from an included partial: not in the form
                i = mapping[i]
            tail = parts[len(head) + 1:]
            if prefix == "verdict.rules":
                tail = tail[:1]  # `when.any_yes.0` -> the `when` box
            if prefix == "examples" and tail[:1] == ["turns"]:
                tail = tail[:3] if len(tail) >= 3 else tail
            return ".".join([prefix, str(i), *tail]) if tail else f"{prefix}.{i}.id"
    if parts[0] == "verdict" and len(parts) >= 2 and parts[1] in ("applies_when", "otherwise"):
        return f"verdict.{parts[1]}"
    return None
