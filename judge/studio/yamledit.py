"""Edit a rubric file so that only what changed is rewritten.

A rubric file is written by people: lexicons wrapped by hand at 120 columns, comments above checks,
long questions on one line. Dumping the whole edited document, even through ruamel's round-trip
mode, re-flows every wrapped list in the file, so a one-term lexicon edit would show up as a
hundred changed lines in review and in the studio's version diff.

`edit_text` therefore splices: it walks the original and the edited document side by side and keeps
the original text of every key or list item whose value did not change. Only a changed leaf (or a
changed item of a list, or a changed key of a mapping) is dumped again, indented to where it sat,
with the comment and blank lines that followed it kept. A one-line flow list that grows past 120
columns is wrapped the way the files wrap them (continuation lines under the first item).

Whatever the splice produces is parsed again and compared with the edited document. If they differ
(a layout the splicer does not understand), the whole document is dumped instead: the formatting
can suffer, the content never does.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, FoldedScalarString, LiteralScalarString

from judge.rubrics import RubricError, load_yaml
from judge.studio.yamlrt import YamlTextError, dump_rt, load_rt

WRAP_AT = 120
"""The rubric files' line length: flow lists are wrapped there, and folded text near it."""


def plain(node: Any) -> Any:
    """A ruamel tree as plain Python (dict, list, str, ...) for comparing values, not layout."""
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def edit_text(original: str, mutate: Callable[[CommentedMap], None]) -> str:
    """Apply `mutate` to the parsed rubric file and return the new text, rewriting only what changed."""
    old = load_rt(original)
    new = load_rt(original)
    mutate(new)
    lines = original.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    wanted = plain(new)
    try:
        text = "".join(_splice_mapping(old, new, lines, 0, len(lines), 0))
        if _reads_back(text) == wanted:
            return text
    except (ValueError, KeyError, IndexError, TypeError):
        pass  # a layout the splicer does not follow: fall back to a full dump below
    text = wrap_flow_lines(dump_rt(new))
    if _reads_back(text) != wanted:
        raise YamlTextError("this edit cannot be written as YAML that reads back the same; a value probably "
                            "needs quoting by hand in the file")
    return text


def _reads_back(text: str) -> Any:
    """The text as the judge reads rubric files (PyYAML, YAML 1.2 booleans): ruamel accepts some flow
    scalars (`[ok?]`) that PyYAML refuses, and the judge's reading is the one that counts."""
    try:
        return plain(load_yaml(Path("rubric.yaml"), text))
    except RubricError as exc:
        raise YamlTextError(str(exc)) from exc


_PLAIN_SAFE = re.compile(r"[A-Za-z][\w '&.\-/]*")
_YAML_WORDS = {"yes", "no", "true", "false", "null", "on", "off", "y", "n", "~"}


def flow_scalar(value: str) -> str:
    """A string for a flow collection (`[a, b]`, `{k: v}`): left plain only when every YAML reader
    takes it as that same string; otherwise double-quoted."""
    if _PLAIN_SAFE.fullmatch(value) and value.lower() not in _YAML_WORDS and value == value.strip():
        return value
    quoted: str = DoubleQuotedScalarString(value)
    return quoted


def set_fields(original: str, fields: Mapping[str, Any], *, after: str | None = None) -> str:
    """Set top-level fields (the version, the change note). A field the file lacks is added after
    `after` (or at the end), so `change_note` sits next to `version`."""

    def mutate(doc: CommentedMap) -> None:
        position = list(doc).index(after) + 1 if after is not None and after in doc else len(doc)
        for key, value in fields.items():
            if key in doc:
                doc[key] = value
            else:
                doc.insert(position, key, value)
                position += 1

    return edit_text(original, mutate)


def text_value(value: str, like: Any = None) -> Any:
    """A string from a form, in the style of the value it replaces: several lines stay literal (`|`);
    a folded (`>`) value stays folded, re-folded near the line length; otherwise a plain string."""
    value = value.replace("\r\n", "\n").strip()
    if "\n" in value:
        return LiteralScalarString(value + "\n")
    if isinstance(like, FoldedScalarString):
        folded = FoldedScalarString(value + "\n")
        folded.fold_pos = _fold_positions(value, WRAP_AT - 20)
        return folded
    return value


def _fold_positions(text: str, width: int) -> list[int]:
    positions, line_start, last_space = [], 0, -1
    for i, ch in enumerate(text):
        if ch == " " and i + 1 < len(text) and text[i + 1] != " " and text[i - 1] != " ":
            if i - line_start > width and last_space > line_start:
                positions.append(last_space)
                line_start = last_space + 1
            last_space = i
    return positions


# --- splicing -------------------------------------------------------------------------------------


def _is_block(node: Any) -> bool:
    return isinstance(node, (CommentedMap, CommentedSeq)) and not node.fa.flow_style() and len(node) > 0


def _blank_or_comment(line: str, col: int) -> bool:
    stripped = line.strip()
    if not stripped:
        return True
    return stripped.startswith("#") and len(line) - len(line.lstrip(" ")) <= col


def _split_trailing(span: list[str], col: int) -> tuple[list[str], list[str]]:
    """A span's own lines and the comment and blank lines after them (kept when the value is redone:
    they introduce the next key more often than they close this one)."""
    cut = len(span)
    while cut > 1 and _blank_or_comment(span[cut - 1], col):
        cut -= 1
    return span[:cut], span[cut:]


def _shift(lines: list[str], by: int) -> list[str]:
    if by >= 0:
        return [(" " * by + line) if line.strip() else line for line in lines]
    cut = -by
    return [line[cut:] if line[:cut].strip() == "" else line for line in lines]


def _dump_lines(wrapper: CommentedMap, skip_first: bool) -> list[str]:
    lines = dump_rt(wrapper).splitlines(keepends=True)
    if skip_first:
        lines = lines[1:]
    while lines and _blank_or_comment(lines[-1], 10**6):
        lines.pop()
    return lines


def _dump_key(key: Any, value: Any, col: int) -> list[str]:
    wrapper = CommentedMap()
    wrapper[key] = value
    return _wrapped(_shift(_dump_lines(wrapper, skip_first=False), col))


def _dump_item(value: Any, dash_col: int) -> list[str]:
    wrapper = CommentedMap()
    seq = CommentedSeq()
    seq.append(value)
    wrapper["x"] = seq
    # yamlrt indents a sequence under its key with the dash at column 2.
    return _wrapped(_shift(_dump_lines(wrapper, skip_first=True), dash_col - 2))


def _wrapped(lines: list[str]) -> list[str]:
    return wrap_flow_lines("".join(lines)).splitlines(keepends=True)


def _key_spans(old: CommentedMap, start: int, end: int) -> tuple[int, dict[Any, tuple[int, int, int]]]:
    """Where each key of `old` starts and ends (lines), and its column; plus where the first key starts."""
    keys = list(old)
    marks = [old.lc.key(k) for k in keys]
    spans: dict[Any, tuple[int, int, int]] = {}
    for i, key in enumerate(keys):
        line, col = marks[i]
        stop = marks[i + 1][0] if i + 1 < len(keys) else end
        spans[key] = (line, stop, col)
    first = marks[0][0] if marks else end
    return first, spans


def _splice_mapping(old: CommentedMap, new: CommentedMap, lines: list[str], start: int, end: int,
                    col: int) -> list[str]:
    first, spans = _key_spans(old, start, end)
    out = list(lines[start:first])  # comments before the first key
    for key in new:
        if key not in spans:
            out += _dump_key(key, new[key], col)
            continue
        line, stop, key_col = spans[key]
        span = lines[line:stop]
        if plain(old[key]) == plain(new[key]):
            out += span
            continue
        own, trailing = _split_trailing(span, key_col)
        redone = _splice_value(old, new, key, lines, line, line + len(own), key_col)
        out += _keep_inline_comment(old, key, own, redone) + trailing
    # Comment lines after a removed key that introduced the next one are lost with it; a removed
    # last key takes only its own lines.
    return out


def _keep_inline_comment(old: CommentedMap, key: Any, own: list[str], redone: list[str]) -> list[str]:
    """`version: "1.0.0"  # bumped on save`: a one-line value redone keeps the comment after it."""
    if len(own) != 1 or len(redone) != 1 or isinstance(old[key], (CommentedMap, CommentedSeq)):
        return redone
    token = old.ca.items.get(key, [None, None, None])[2]
    comment = getattr(token, "value", "") or ""
    first = comment.split("\n", 1)[0]
    line = own[0].rstrip("\n")
    start = line.rfind(first.strip()) if first.lstrip(" ").startswith("#") else -1
    if start <= 0:
        return redone
    while start > 0 and line[start - 1] == " ":
        start -= 1
    return [redone[0].rstrip("\n") + line[start:] + "\n"]


def _splice_value(old: CommentedMap, new: CommentedMap, key: Any, lines: list[str], line: int, stop: int,
                  col: int) -> list[str]:
    before, after = old[key], new[key]
    value_line = old.lc.value(key)[0]
    if _is_block(before) and type(before) is type(after) and value_line > line:
        header = lines[line:value_line]
        if isinstance(before, CommentedMap):
            child_col = before.lc.key(next(iter(before)))[1]
            return header + _splice_mapping(before, after, lines, value_line, stop, child_col)
        return header + _splice_seq(before, after, lines, value_line, stop)
    return _dump_key(key, after, col)


def _splice_seq(old: CommentedSeq, new: CommentedSeq, lines: list[str], start: int, end: int) -> list[str]:
    """Items are aligned by value (difflib), so deleting or inserting one in the middle keeps the text
    of every other; a changed item is spliced key by key when its first key (its id) is unchanged."""
    marks = [old.lc.item(i) for i in range(len(old))]
    first = marks[0][0] if marks else end
    out = list(lines[start:first])
    dash_col = marks[0][1] - 2 if marks else 2

    def span(i: int) -> list[str]:
        return lines[marks[i][0]:marks[i + 1][0] if i + 1 < len(old) else end]

    keys_old = [json.dumps(plain(v), sort_keys=True) for v in old]
    keys_new = [json.dumps(plain(v), sort_keys=True) for v in new]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, keys_old, keys_new, autojunk=False).get_opcodes():
        if tag == "equal":
            for i in range(i1, i2):
                out += span(i)
            continue
        for k, j in enumerate(range(j1, j2)):
            i = i1 + k
            if tag == "replace" and i < i2:
                own, trailing = _split_trailing(span(i), dash_col)
                out += _splice_item(old[i], new[j], lines, marks[i], len(own), dash_col) + trailing
            else:
                out += _dump_item(new[j], dash_col)
    return out


def _splice_item(before: Any, item: Any, lines: list[str], mark: tuple[int, int], own: int,
                 dash_col: int) -> list[str]:
    line, col = mark
    if (isinstance(before, CommentedMap) and isinstance(item, CommentedMap) and _is_block(before) and len(item) > 0
            and next(iter(before)) == next(iter(item))
            and plain(before[next(iter(before))]) == plain(item[next(iter(item))])
            and before.lc.key(next(iter(before)))[0] == line):
        return _splice_mapping(before, item, lines, line, line + own, col)
    return _dump_item(item, dash_col)


# --- wrapping -------------------------------------------------------------------------------------

_FLOW_LINE = re.compile(r"^(?P<lead>\s*(?:- )?[^\s#'\"][^:#]*:\s\[)(?P<body>.*)\](?P<tail>\s*)$")


def _flow_items(body: str) -> list[str] | None:
    """The items of a one-line flow list, split at top-level commas; None if it nests or is odd."""
    items, current, quote = [], "", ""
    i = 0
    while i < len(body):
        ch = body[i]
        if quote:
            current += ch
            if ch == quote:
                if quote == "'" and body[i + 1:i + 2] == "'":  # '' is an escaped quote
                    current += "'"
                    i += 1
                else:
                    quote = ""
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch in "[]{}":
            return None
        elif ch == ",":
            items.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1
    if quote:
        return None
    if current.strip():
        items.append(current.strip())
    return items


def wrap_flow_lines(text: str, width: int = WRAP_AT) -> str:
    """Wrap every `key: [a, b, ...]` line longer than `width`, continuing under the first item."""
    out = []
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        match = _FLOW_LINE.match(bare)
        items = _flow_items(match["body"]) if match and len(bare) > width else None
        if not match or not items:
            out.append(line)
            continue
        lead = match["lead"]
        pad = " " * len(lead)
        current = lead
        for n, item in enumerate(items):
            piece = item + ("," if n + 1 < len(items) else "]")
            if current not in (lead, pad) and len(current) + 1 + len(piece) > width:
                out.append(current.rstrip() + "\n")
                current = pad + piece
            else:
                current += ("" if current in (lead, pad) else " ") + piece
        out.append(current + "\n")
    return "".join(out)
