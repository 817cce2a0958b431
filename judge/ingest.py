"""The only reader of input logs: JSONL, CSV or Parquet in, validated Records out.

Every row of the input either becomes a Record, is dropped as an identical duplicate (and
counted), or is quarantined with its line number, a reason and its complete original text. A bad
row never raises and never disappears silently; only an input that cannot be read at all (missing
file, unknown format, unreadable Parquet, unreadable CSV header) raises InputError.

All three formats turn a row into a plain dict of field values and hand it to one shared function,
`_build_record`, so that a messages column or a risk tier means the same thing in every format.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.schema import Record, RecordMeta, RiskTier, Role, Strict, Turn

FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File extension -> format. `fmt=` overrides it for files named otherwise."""

SUPPORTED_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")

METADATA_KEY = "metadata"
"""A row key whose object value carries region / model_id / user_risk_tier and extra fields."""

MODEL_ALIAS = "model"
"""Many logs call the chatbot column `model`; accepted when the model_id column is absent."""

_ROLES = ", ".join(role.value for role in Role)
_TIERS = ", ".join(tier.value for tier in RiskTier)
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
"""Content-part types that carry text: Chat Completions uses "text", the Responses API uses
"input_text"/"output_text". Every other part (images, audio, files) cannot be judged as text."""
_ROLE_ALIASES = {"developer": Role.SYSTEM}
"""OpenAI renamed the system role "developer" for newer models; it plays the same part."""


class InputError(Exception):
    """The input as a whole cannot be read. The message names the path and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ColumnMap(Strict):
    """Which input column holds each field. Defaults match the names in our own logs."""

    id: str = Field(default="id", min_length=1)
    messages: str = Field(default="messages", min_length=1)
    prompt: str = Field(default="prompt", min_length=1)
    response: str = Field(default="response", min_length=1)
    region: str = Field(default="region", min_length=1)
    model_id: str = Field(default="model_id", min_length=1)
    user_risk_tier: str = Field(default="user_risk_tier", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ColumnMap:
        # Two fields read from one column would, for example, judge the prompt as the response
        # without any error; refuse the mapping instead.
        owners: dict[str, str] = {}
        for key, column in self.model_dump().items():
            if column in owners:
                raise ValueError(
                    f"column {column!r} is mapped to both {owners[column]!r} and {key!r}; "
                    f"map one of them to another column"
                )
            owners[column] = key
        return self

    @classmethod
    def expected_keys(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def from_pairs(cls, pairs: Sequence[str]) -> ColumnMap:
        """Parse CLI options such as ["response=answer", "prompt=question"]."""
        expected = ", ".join(cls.expected_keys())
        mapping: dict[str, str] = {}
        for pair in pairs:
            key, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not key or not column:
                raise ValueError(
                    f"malformed column mapping {pair!r}: expected KEY=COLUMN with KEY one of "
                    f"{expected}"
                )
            if key not in cls.model_fields:
                raise ValueError(
                    f"unknown column key {key!r} in {pair!r}: expected one of {expected}"
                )
            if key in mapping:
                raise ValueError(f"column key {key!r} is mapped twice (expected keys: {expected})")
            mapping[key] = column
        try:
            return cls(**mapping)
        except ValidationError as exc:
            # ValidationError is already a ValueError, but its text is pydantic's; keep ours.
            raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from None

    def mapped_columns(self) -> set[str]:
        return set(self.model_dump().values())


class Quarantined(Strict):
    """A row that could not become a Record, kept whole so that nothing is lost."""

    source: str
    line: int = Field(description="1-based line (JSONL, CSV: where the row starts) or row number.")
    reason: str
    raw: str = Field(description="The line as written (JSONL) or a JSON dump of the row's fields.")


@dataclass
class IngestResult:
    records: list[Record]
    quarantined: list[Quarantined]
    rows_read: int
    duplicates_identical: int
    """Rows whose id and content repeat an earlier row: dropped, counted, not quarantined."""


# --- one row -> one Record -----------------------------------------------------------------------


class _RowError(Exception):
    """Why a row cannot become a Record; caught per row and turned into a quarantine entry."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _type(value: object) -> str:
    return type(value).__name__


def _blank(value: object) -> bool:
    """None and whitespace-only strings: what an empty CSV cell or a null Parquet value is."""
    return value is None or (isinstance(value, str) and not value.strip())


def _text_of(content: object, where: str) -> str | None:
    """A message's content as text: a string, OpenAI content parts (text parts joined with a
    newline, other parts ignored), or None for a tool-call turn with no text."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _RowError(
            f"wrong type: {where} 'content' must be a string, a list of content parts or null, "
            f"got {_type(content)}"
        )
    texts: list[str] = []
    for number, part in enumerate(content, start=1):
        if not isinstance(part, dict):
            raise _RowError(
                f"wrong type: {where} content part {number} must be an object, got {_type(part)}"
            )
        kind = part.get("type")
        if isinstance(kind, str) and kind in _TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise _RowError(
                    f"wrong type: {where} content part {number} 'text' must be a string, "
                    f"got {_type(text)}"
                )
            texts.append(text)
    return "\n".join(texts)


def _parse_messages(messages: object, column: str) -> list[tuple[Role, str | None]]:
    """Check an OpenAI-style message list and return (role, text) per item, in order; text is
    None for an assistant turn that only calls tools. Items are numbered from 1 in reasons."""
    if not isinstance(messages, list):
        raise _RowError(f"wrong type: {column!r} must be a list, got {_type(messages)}")
    turns: list[tuple[Role, str | None]] = []
    for number, item in enumerate(messages, start=1):
        where = f"{column!r} item {number}"
        if not isinstance(item, dict):
            raise _RowError(f"wrong type: {where} must be an object, got {_type(item)}")
        if "role" not in item:
            raise _RowError(f"wrong type: {where} has no 'role'")
        raw_role = item["role"]
        role = _ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            try:
                role = Role(raw_role)
            except ValueError:
                raise _RowError(
                    f"wrong type: {where} has role {raw_role!r}, expected one of {_ROLES}"
                ) from None
        # An assistant turn that only calls tools has null (or, in some exporters, no) content.
        if "content" not in item and not (role is Role.ASSISTANT and item.get("tool_calls")):
            raise _RowError(f"wrong type: {where} has no 'content'")
        text = _text_of(item.get("content"), where)
        if text is None and role is not Role.ASSISTANT:
            raise _RowError(f"wrong type: {where} 'content' is null but role is {role.value!r}")
        turns.append((role, text))
    return turns


def _as_turns(parsed: Sequence[tuple[Role, str | None]]) -> list[Turn]:
    # Tool-call-only turns carry no text a judge could read; they are skipped.
    return [Turn(role=role, content=text) for role, text in parsed if text is not None]


def _conversation(messages: object, column: str) -> tuple[list[Turn], str]:
    """Split a message list into (turns before the judged response, the judged response).

    The judged response is the last assistant turn with non-empty content; turns after it were
    written after the response and so are not part of what it answered: they are dropped."""
    parsed = _parse_messages(messages, column)
    assistant = [i for i, (role, _) in enumerate(parsed) if role is Role.ASSISTANT]
    if not assistant:
        raise _RowError(f"missing response: no assistant turn in {column!r}")
    with_text = [i for i in assistant if parsed[i][1]]
    if not with_text:
        raise _RowError("empty response")
    judged = with_text[-1]
    response = parsed[judged][1]
    assert response is not None  # with_text only holds turns with non-empty text
    return _as_turns(parsed[:judged]), response


def _context(messages: object, column: str, response: str) -> list[Turn]:
    """A message list given beside a response column: all of it is the conversation the response
    answered. If it already ends with that same response, that copy is not context."""
    turns = _as_turns(_parse_messages(messages, column))
    if turns and turns[-1].role is Role.ASSISTANT and turns[-1].content == response:
        turns.pop()
    return turns


def _optional_str(row: Mapping[str, Any], column: str) -> str | None:
    value = row.get(column)
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise _RowError(f"wrong type: {column!r} must be a string, got {_type(value)}")
    return value


def _risk_tier(value: object, column: str) -> RiskTier | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            # Case and padding are how a spreadsheet writes it, not a different tier.
            return RiskTier(value.strip().lower())
        except ValueError:
            pass
    raise _RowError(f"wrong type: {column!r} must be one of {_TIERS}, got {value!r}")


def _scalar(value: Any) -> str | int | float | bool | None:
    """An extra value as RecordMeta.extra accepts it; anything structured becomes JSON text so
    that a nested field survives for reports instead of failing the row."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _record_id(value: object, column: str) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    # pandas turns an integer column with a missing value into floats (7 -> 7.0), and writes
    # Parquet that way; an integral float is that integer, not a different id.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise _RowError(f"wrong type: {column!r} must be a string or an integer, got {_type(value)}")


def derived_id(record: Record) -> str:
    """The id of a row that has none: a hash of its whole content (turns, response, metadata), the
    same on every run and machine. Metadata is included so that two models giving the same stock
    reply to the same prompt stay two records."""
    return "sha-" + record.content_hash()[:16]


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # in C: far faster than looking at each character
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


_LONE_SURROGATE = "invalid Unicode: a lone surrogate (such as \\ud800) cannot be encoded as UTF-8"


def _build_record(
    row: Mapping[str, Any], line: int, columns: ColumnMap, unicode_checked: bool = False
) -> Record:
    """The one place where a row's fields become a Record, for every input format.

    A value of None is an absent value. Raises _RowError with the quarantine reason, and nothing
    else: a bad row must never stop the read."""
    # A JSON escape such as "\ud800" decodes to half a surrogate pair: valid JSON, but text that
    # cannot be written as UTF-8, so it would fail later in hashing or in the results file.
    if not unicode_checked and _has_lone_surrogate(row):
        raise _RowError(_LONE_SURROGATE)
    try:
        return _record_from(row, line, columns)
    except UnicodeEncodeError:  # kept as a net: the check above should have caught it
        raise _RowError(_LONE_SURROGATE) from None
    except ValidationError as exc:
        if any(error["type"] == "string_unicode" for error in exc.errors()):
            raise _RowError(_LONE_SURROGATE) from None
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {error['msg']}"
            for error in exc.errors()
        )
        raise _RowError(f"invalid record: {problems}") from None


def _record_from(row: Mapping[str, Any], line: int, columns: ColumnMap) -> Record:
    messages = row.get(columns.messages)
    response_value = row.get(columns.response)
    has_messages = not _blank(messages) and messages != []
    if has_messages and _blank(response_value):
        turns, response = _conversation(messages, columns.messages)
    else:
        if columns.response not in row:
            raise _RowError(f"missing response: no {columns.response!r} column")
        if response_value is None:
            raise _RowError(f"missing response: {columns.response!r} is null")
        if not isinstance(response_value, str):
            raise _RowError(
                f"wrong type: {columns.response!r} must be a string, got {_type(response_value)}"
            )
        response = response_value
        if has_messages:
            # Both columns: a separate response column is the reply to the whole message list.
            turns = _context(messages, columns.messages, response)
        else:
            prompt = _optional_str(row, columns.prompt)
            turns = [] if prompt is None else [Turn(role=Role.USER, content=prompt)]
    if not response.strip():
        raise _RowError("empty response")

    mapped = columns.mapped_columns()
    metadata = row.get(METADATA_KEY)
    # Any other value under that name (or a column mapped onto it) is an ordinary column.
    has_nested = isinstance(metadata, dict) and METADATA_KEY not in mapped
    nested: Mapping[str, Any] = metadata if has_nested and isinstance(metadata, dict) else {}

    region = _optional_str(row, columns.region)
    if region is None:
        region = _optional_str(nested, "region")
    model_id = _optional_str(row, columns.model_id)
    uses_alias = model_id is None and MODEL_ALIAS not in mapped
    if uses_alias:
        model_id = _optional_str(row, MODEL_ALIAS)
    if model_id is None:
        model_id = _optional_str(nested, "model_id")
    if model_id is None:
        model_id = _optional_str(nested, MODEL_ALIAS)
    tier = _risk_tier(row.get(columns.user_risk_tier), columns.user_risk_tier)
    if tier is None:
        tier = _risk_tier(nested.get("user_risk_tier"), "metadata.user_risk_tier")

    consumed = set(mapped)
    if uses_alias:
        consumed.add(MODEL_ALIAS)
    if has_nested:
        consumed.add(METADATA_KEY)
    extra: dict[str, str | int | float | bool | None] = {}
    # Top-level columns win over same-named keys inside a metadata object.
    for key, value in nested.items():
        if key not in {"region", "model_id", MODEL_ALIAS, "user_risk_tier"}:
            extra[str(key)] = _scalar(value)
    for key, value in row.items():
        if key not in consumed:
            extra[key] = _scalar(value)

    record = Record(
        id=_record_id(row.get(columns.id), columns.id) or "pending",
        turns=turns,
        response=response,
        meta=RecordMeta(region=region, model_id=model_id, user_risk_tier=tier, extra=extra),
        source_line=line,
    )
    if _blank(row.get(columns.id)):
        record.id = derived_id(record)
    return record


# --- collecting rows -----------------------------------------------------------------------------


class _Collector:
    """Turns rows into records, quarantine entries and duplicate counts, in input order."""

    def __init__(self, source: Path, columns: ColumnMap) -> None:
        self.source = str(source)
        self.columns = columns
        self.records: list[Record] = []
        self.quarantined: list[Quarantined] = []
        self.rows_read = 0
        self.duplicates_identical = 0
        self._first: dict[str, tuple[int, str]] = {}  # id -> (line, content hash)

    def quarantine(self, line: int, reason: str, raw: str) -> None:
        self.quarantined.append(Quarantined(source=self.source, line=line, reason=reason, raw=raw))

    def row(
        self,
        line: int,
        fields: Mapping[str, Any],
        raw: Callable[[], str],
        unicode_checked: bool = False,
    ) -> None:
        # raw is only built for rows that need it: dumping every good row would double the work.
        try:
            record = _build_record(fields, line, self.columns, unicode_checked)
        except _RowError as exc:
            self.quarantine(line, exc.reason, raw())
            return
        digest = record.content_hash()
        first = self._first.get(record.id)
        if first is None:
            self._first[record.id] = (line, digest)
            self.records.append(record)
        elif first[1] == digest:
            self.duplicates_identical += 1
        else:
            reason = f"duplicate id {record.id!r} with different content"
            self.quarantine(line, f"{reason} (first seen on line {first[0]})", raw())

    def result(self) -> IngestResult:
        return IngestResult(
            records=self.records,
            quarantined=self.quarantined,
            rows_read=self.rows_read,
            duplicates_identical=self.duplicates_identical,
        )


def _dump(value: object) -> str:
    """A row's fields as JSON text for Quarantined.raw; values JSON cannot hold become strings."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _constant(text: str) -> Callable[[], str]:
    return lambda: text


def _dumper(fields: Mapping[str, Any]) -> Callable[[], str]:
    return lambda: _dump(fields)


def _decode_messages(
    fields: dict[str, Any], column: str, line: int, collector: _Collector, raw: Callable[[], str]
) -> bool:
    """CSV cells (and Parquet string columns) hold messages as JSON text: parse it in place.
    Returns False after quarantining the row when the text is not JSON."""
    value = fields.get(column)
    if not isinstance(value, str) or not value.strip():
        return True
    try:
        fields[column] = json.loads(value)
    except (ValueError, RecursionError) as exc:
        collector.quarantine(line, f"invalid JSON in column {column!r}: {exc}", raw())
        return False
    return True


# --- JSONL ---------------------------------------------------------------------------------------


_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _read_jsonl(path: Path, collector: _Collector) -> None:
    # Bytes, one line at a time: a line of bad UTF-8 is then one quarantined row, not a failed file.
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None
    with handle:
        for number, data in enumerate(handle, start=1):
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark written by some Windows tools
            if not data.strip():
                continue
            collector.rows_read += 1
            data = data.rstrip(b"\r\n")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                # backslashreplace keeps every byte visible (\xff) in a file we can write as UTF-8.
                collector.quarantine(
                    number, "invalid UTF-8", data.decode("utf-8", errors="backslashreplace")
                )
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                collector.quarantine(number, f"invalid JSON: {exc}", text)
                continue
            if not isinstance(value, dict):
                kind = _JSON_TYPES.get(type(value), _type(value))
                collector.quarantine(number, f"expected a JSON object, got {kind}", text)
                continue
            # Valid UTF-8 decodes to valid text; only a \u escape can yield a lone surrogate.
            collector.row(number, value, _constant(text), unicode_checked="\\u" not in text)


# --- CSV -----------------------------------------------------------------------------------------


def _has_surrogates(text: str) -> bool:
    """Whether surrogateescape had to stand in for bytes that are not UTF-8."""
    return _has_lone_surrogate(text)


def _visible(text: str) -> str:
    """Undo surrogateescape: the original bytes, with invalid ones shown as \\xNN."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def _read_csv(path: Path, collector: _Collector) -> None:
    # The stdlib reader, not pandas: it reports the physical line of every row, so a quarantine
    # entry points at the right line even after multi-line quoted fields.
    # Responses and JSON message lists easily pass the default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    try:
        # utf-8-sig drops an Excel byte-order mark; surrogateescape lets a row with bad bytes be
        # quarantined on its own instead of aborting the whole file.
        handle = path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InputError(path, f"cannot read the CSV header: {exc}") from None
        if header is None or not any(name.strip() for name in header):
            raise InputError(path, "cannot read the CSV header: no column names")
        if any(_has_surrogates(name) for name in header):
            raise InputError(path, "cannot read the CSV header: invalid UTF-8")
        names = [name.strip() for name in header]
        repeated = sorted({name for name in names if name and names.count(name) > 1})
        if repeated:
            raise InputError(path, f"cannot read the CSV header: repeated columns {repeated}")

        end = reader.line_num
        while True:
            start = end + 1  # the row begins on the line after the previous row ended
            try:
                cells = next(reader, None)
            except csv.Error as exc:
                # The parser cannot resynchronise after a broken row, so the rest is unreadable.
                raise InputError(path, f"line {start}: {exc}") from None
            if cells is None:
                break
            end = reader.line_num
            if not any(cells):
                continue  # a blank line, or a row of empty cells left by a spreadsheet
            collector.rows_read += 1
            if any(_has_surrogates(cell) for cell in cells):
                collector.quarantine(start, "invalid UTF-8", _visible(_dump(cells)))
                continue
            if len(cells) != len(names):
                collector.quarantine(
                    start,
                    f"wrong number of fields: expected {len(names)}, got {len(cells)}",
                    _dump(cells),
                )
                continue
            original = dict(zip(names, cells, strict=True))
            raw = _dumper(original)

            # A CSV cell cannot be null: an empty optional cell means the value is absent. The
            # response stays "" so that it is reported as an empty response, not a missing column.
            fields: dict[str, Any] = {
                name: (None if value == "" and name != collector.columns.response else value)
                for name, value in original.items()
                if name or value  # a nameless column from a trailing comma, when empty
            }
            if _decode_messages(fields, collector.columns.messages, start, collector, raw):
                collector.row(start, fields, raw)


# --- Parquet -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy and pandas values as plain Python: arrays -> lists, NaN/NaT/NA -> None."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):  # numpy's float64 too: it subclasses float
        return None if math.isnan(value) else float(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _plain(tolist())
    import pandas as pd

    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _read_parquet(path: Path, collector: _Collector) -> None:
    # Imported here so that reading JSONL or CSV never pays for pandas.
    import pandas as pd

    try:
        # The pyarrow backend keeps integer columns with nulls as integers and gives nested
        # values (a messages column of structs) as Python lists and dicts.
        frame = pd.read_parquet(path, engine="pyarrow", dtype_backend="pyarrow")
        rows = frame.to_dict(orient="records")
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise InputError(path, f"cannot read Parquet: {exc}") from None
    _collect_rows(rows, collector)


def _collect_rows(rows: Sequence[Mapping[Any, Any]], collector: _Collector) -> None:
    for number, row in enumerate(rows, start=1):
        collector.rows_read += 1
        fields: dict[str, Any] = {str(key): _plain(value) for key, value in row.items()}
        raw = _dumper(dict(fields))  # a copy: decoding messages changes fields in place
        if _decode_messages(fields, collector.columns.messages, number, collector, raw):
            collector.row(number, fields, raw)


def records_from_frame(frame: Any, columns: ColumnMap | None = None,
                       source: str = "<dataframe>") -> IngestResult:
    """Rows of a pandas DataFrame, with the same columns as an input file, as records; the row
    number (from 1) stands in for the line number."""
    collector = _Collector(Path(source), columns or ColumnMap())
    _collect_rows(frame.to_dict(orient="records"), collector)
    return collector.result()


# --- entry points --------------------------------------------------------------------------------


def _format(path: Path, fmt: str | None) -> str:
    supported = ", ".join(SUPPORTED_FORMATS)
    if fmt is not None:
        name = fmt.strip().lower().lstrip(".")
        name = FORMATS.get(f".{name}", name)
        if name not in SUPPORTED_FORMATS:
            raise InputError(path, f"unknown format {fmt!r}: supported formats are {supported}")
        return name
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        extensions = ", ".join(FORMATS)
        raise InputError(
            path,
            f"unknown format for extension {path.suffix or '(none)'!r}: supported formats are "
            f"{supported} ({extensions}); pass a format explicitly for other names",
        )
    return found


_READERS: dict[str, Callable[[Path, _Collector], None]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
}


def read_records(
    path: Path | str, columns: ColumnMap | None = None, fmt: str | None = None
) -> IngestResult:
    """Read an input log. Bad rows are quarantined, never raised; InputError means the input as
    a whole cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a file")
    collector = _Collector(path, columns or ColumnMap())
    _READERS[_format(path, fmt)](path, collector)
    return collector.result()


def _quarantine_lines(items: Sequence[Quarantined]) -> Iterator[str]:
    for item in items:
        yield json.dumps(item.model_dump(mode="json"), ensure_ascii=False) + "\n"


def write_quarantine(path: Path, items: Sequence[Quarantined]) -> None:
    """Write quarantined rows as JSONL, replacing any previous file in one step: a reader sees the
    old file or the new one, never half of one. An empty list still writes (an empty file), so
    that rows fixed since the last run stop being reported."""
    path = Path(path)
    ensure_private_dir(path.parent)
    write_text_atomic(path, "".join(_quarantine_lines(items)), fsync=True)
