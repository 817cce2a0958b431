"""Round-trip YAML for rubric files the studio edits: comments, key order and quoting survive an edit.

The judge reads rubrics with judge.rubrics.load_yaml (PyYAML, YAML 1.2 booleans). The studio edits
them through ruamel.yaml's round-trip mode instead, so that saving a one-word lexicon change rewrites
one line of the file, not the whole of it, and a clinician's comments stay where they wrote them.
ruamel reads YAML 1.2 too: `yes` and `no` stay words, as load_yaml reads them.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError


class YamlTextError(ValueError):
    """Text that is not a YAML mapping; the message names the line."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a clinician's long lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load_rt(text: str) -> CommentedMap:
    """Parse a rubric file for editing. Duplicate keys are an error here as in load_yaml."""
    try:
        doc = _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise YamlTextError(f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(doc, CommentedMap):
        raise YamlTextError(f"expected a mapping of fields at the top level, got {type(doc).__name__}")
    return doc


def dump_rt(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()
