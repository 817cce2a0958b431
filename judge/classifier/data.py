"""Training rows for the classifier, from three kinds of source.

- `labelled`: a CSV, JSONL or Parquet table with a response column and a label column (SAFE /
  BORDERLINE / HARMFUL, or values mapped with --label-map), optionally a prompt column or a
  `messages` list. The project's own datasets/<rubric>/examples.jsonl and the third-party files'
  layout (`prompt`, `response`, `gold_label`, `label_scope`) are read without options.
- `distilled`: a psyjudge run folder (or its results.jsonl). The verdicts that the teacher tiers
  decided (the LLM judge by default) become labels: the judge teaches the cheap tier on the user's
  own traffic. ERROR and degraded verdicts never teach; neither does the classifier's own output.

Every row that is left out is counted by reason and the counts go into the model card.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from judge.classifier.inputs import ModelInput, model_input, text_input
from judge.schema import Label

LABEL_COLUMNS = ("label", "gold_label")
RESPONSE_COLUMNS = ("response",)
CONTEXT_COLUMNS = ("prompt", "context", "user")
DEFAULT_TEACHERS = ("llm",)


class TrainingDataError(ValueError):
    """Training data that cannot be used as given; the message names the file and what to change."""


@dataclass(frozen=True)
class Row:
    input: ModelInput
    label: Label
    source: str
    id: str = ""


@dataclass
class Loaded:
    kind: str
    path: str
    rows: list[Row]
    read: int
    skipped: Counter[str] = field(default_factory=Counter)
    teacher: list[str] | None = None
    sha256: str | None = None
    rubrics: set[str] = field(default_factory=set)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"{path}: cannot read the table: {exc}") from exc
    raise TrainingDataError(f"{path}: expected .csv, .jsonl or .parquet")


def parse_label_map(pairs: Iterable[str]) -> dict[str, Label]:
    """`unsafe=HARMFUL`-style options into a map from raw value (case-insensitive) to Label."""
    out: dict[str, Label] = {}
    for pair in pairs:
        raw, sep, label = pair.partition("=")
        if not sep or not raw.strip():
            raise TrainingDataError(f"--label-map {pair!r}: expected RAW=LABEL, e.g. unsafe=HARMFUL")
        try:
            out[raw.strip().casefold()] = Label(label.strip().upper())
        except ValueError as exc:
            raise TrainingDataError(f"--label-map {pair!r}: {label!r} is not SAFE, BORDERLINE or HARMFUL") from exc
    return out


def _label(value: Any, label_map: Mapping[str, Label]) -> Label | None:
    text = str(value).strip()
    if text.casefold() in label_map:
        return label_map[text.casefold()]
    with contextlib.suppress(ValueError):
        return Label(text.upper())
    return None


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise TrainingDataError(f"{path}: no {what} column {wanted!r}; columns are {', '.join(columns)}")
        return wanted
    return next((c for c in candidates if c in columns), None)


def _last_user(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for turn in reversed(messages):
        if isinstance(turn, dict) and turn.get("role") == "user":
            return str(turn.get("content", ""))
    return ""


def read_labelled_table(path: Path, *, label_column: str | None = None, response_column: str | None = None,
                        context_column: str | None = None, label_map: Mapping[str, Label] | None = None,
                        kind: str = "labelled") -> Loaded:
    """Rows of a labelled table. A label value nobody mapped is an error (listing the values and the
    option that maps them), not a silently dropped class; a row whose label is about the prompt
    rather than the response (`label_scope`) is left out and counted."""
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    label_col = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    response_col = _pick(columns, response_column, RESPONSE_COLUMNS, "response", path)
    if label_col is None or response_col is None:
        raise TrainingDataError(f"{path}: needs a response column and a label column ({' or '.join(LABEL_COLUMNS)}); "
                                f"columns are {', '.join(columns)}; name them with --response-column/--label-column")
    context_col = _pick(columns, context_column, CONTEXT_COLUMNS, "context", path)
    mapping = dict(label_map or {})
    labels = [_label(v, mapping) for v in frame[label_col]]
    unknown = sorted({str(v) for v, lab in zip(frame[label_col], labels, strict=True) if lab is None})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:8])
        raise TrainingDataError(f"{path}: label values {shown} are not SAFE, BORDERLINE or HARMFUL; map them with "
                                f"--label-map VALUE=LABEL")
    loaded = Loaded(kind=kind, path=str(path), rows=[], read=len(frame), sha256=file_sha256(path))
    scope = frame["label_scope"].astype(str).tolist() if "label_scope" in columns else None
    ids = frame["id"].astype(str).tolist() if "id" in columns else [str(i + 1) for i in range(len(frame))]
    if "rubric" in columns:
        loaded.rubrics = {str(r) for r in frame["rubric"] if str(r)}
    for n, (response, label) in enumerate(zip(frame[response_col], labels, strict=True)):
        if scope is not None and scope[n] not in ("response", ""):
            loaded.skipped[f"label_scope={scope[n]}"] += 1
            continue
        if not isinstance(response, str) or not response.strip():
            loaded.skipped["empty response"] += 1
            continue
        if context_col is not None:
            context = frame[context_col].iloc[n]
            context = context if isinstance(context, str) else ""
        else:
            context = _last_user(frame["messages"].iloc[n]) if "messages" in columns else ""
        assert label is not None
        loaded.rows.append(Row(text_input(response, context), label, str(path), ids[n]))
    return loaded


def _results_file(path: Path) -> tuple[Path, bool]:
    """(the verdict file to read, whether its rows are per record). A run folder with several rubrics
    has record_verdicts.jsonl: one combined verdict per record, which is what a record-level
    classifier should learn from."""
    if path.is_dir():
        combined = path / "record_verdicts.jsonl"
        if combined.is_file():
            return combined, True
        path = path / "results.jsonl"
    if not path.is_file():
        raise TrainingDataError(f"{path}: no results to distil from (expected a run folder or its results.jsonl)")
    return path, path.name == "record_verdicts.jsonl"


def _deciding_tier(row: Mapping[str, Any]) -> str | None:
    decided = row.get("decided_by")
    return str(decided).rsplit("/", 1)[-1] if decided else None


def read_distillation(path: Path, *, teachers: Sequence[str] = DEFAULT_TEACHERS,
                      records: Path | None = None) -> Loaded:
    """Rows from finished verdicts. The user turn comes from the run's input log (`records`) when
    given; without it the classifier learns from responses alone, and the card says so."""
    from judge.ingest import read_records

    file, _ = _results_file(path)
    contexts: dict[str, ModelInput] = {}
    if records is not None:
        for record in read_records(records).records:
            contexts[record.id] = model_input(record)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    read = 0
    with open(file, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            read += 1
            try:
                row = json.loads(line)
                latest[(str(row["record_id"]), str(row["rubric"]))] = row  # a rerun's line supersedes
            except (ValueError, KeyError, TypeError):
                continue
    loaded = Loaded(kind="distilled", path=str(file), rows=[], read=read, teacher=list(teachers),
                    sha256=file_sha256(file))
    if read > len(latest):  # a reason is listed only when it left rows out
        loaded.skipped["superseded or unreadable line"] = read - len(latest)
    for (record_id, rubric), row in latest.items():
        tier = _deciding_tier(row)
        label = row.get("label")
        if label not in {str(x) for x in Label}:
            loaded.skipped["ERROR verdict"] += 1
        elif row.get("degraded"):
            loaded.skipped["degraded verdict"] += 1
        elif tier not in teachers:
            loaded.skipped[f"decided by {tier or 'nobody'}, not a teacher"] += 1
        elif not isinstance(row.get("response"), str) or not row["response"].strip():
            loaded.skipped["no response text"] += 1
        else:
            loaded.rubrics.update(part.split("@", 1)[0] for part in rubric.split("+"))
            inp = contexts.get(record_id) or text_input(row["response"])
            loaded.rows.append(Row(inp, Label(str(label)), str(file), record_id))
    missing = sum(1 for r in loaded.rows if r.id not in contexts)
    if records is not None and missing:
        loaded.skipped["no input row for the verdict (learnt from the response alone)"] = missing
    return loaded


def deduplicate(rows: Sequence[Row]) -> tuple[list[Row], Counter[str]]:
    """One row per (context, response). The same text under different labels teaches nothing but
    noise, so every copy of it is dropped and counted."""
    by_text: dict[ModelInput, list[Row]] = {}
    for row in rows:
        by_text.setdefault(row.input, []).append(row)
    kept: list[Row] = []
    dropped: Counter[str] = Counter()
    for group in by_text.values():
        if len({r.label for r in group}) > 1:
            dropped["conflicting labels for the same text"] += len(group)
            continue
        kept.append(group[0])
        if len(group) > 1:
            dropped["duplicate text"] += len(group) - 1
    return kept, dropped
