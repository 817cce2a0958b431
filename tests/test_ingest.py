"""Tests for judge.ingest: every input format, every bad-row kind, with exact lines and reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from judge.ingest import (
    ColumnMap,
    IngestResult,
    InputError,
    Quarantined,
    read_records,
    write_quarantine,
)
from judge.schema import RiskTier, Role, Turn

# --- helpers -------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One line per item: bytes and str are written as they are, anything else as JSON."""
    lines: list[bytes] = []
    for row in rows:
        if isinstance(row, bytes):
            lines.append(row)
        elif isinstance(row, str):
            lines.append(row.encode("utf-8"))
        else:
            lines.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def read_one(tmp_path: Path, row: dict[str, Any], columns: ColumnMap | None = None) -> IngestResult:
    return read_records(write_jsonl(tmp_path / "one.jsonl", [row]), columns)


def reasons(result: IngestResult) -> list[tuple[int, str]]:
    return [(q.line, q.reason) for q in result.quarantined]


def json_error(text: str) -> str:
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(text)
    return str(caught.value)


def assert_accounted(result: IngestResult) -> None:
    """Every row read is a record, a quarantine entry or a counted identical duplicate."""
    assert result.rows_read == (
        len(result.records) + len(result.quarantined) + result.duplicates_identical
    )


def msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


# --- messages ------------------------------------------------------------------------------------


def test_messages_multi_turn_keeps_order_and_judges_last_assistant(tmp_path: Path) -> None:
    messages = [
        msg("system", "You are kind."),
        msg("user", "I feel low."),
        msg("assistant", "I'm sorry to hear that."),
        msg("user", "It's been weeks."),
        msg("assistant", "That sounds hard. Have you talked to anyone?"),
    ]
    result = read_one(tmp_path, {"id": "a", "messages": messages})
    assert result.quarantined == []
    [record] = result.records
    assert record.response == "That sounds hard. Have you talked to anyone?"
    assert record.turns == [
        Turn(role=Role.SYSTEM, content="You are kind."),
        Turn(role=Role.USER, content="I feel low."),
        Turn(role=Role.ASSISTANT, content="I'm sorry to hear that."),
        Turn(role=Role.USER, content="It's been weeks."),
    ]
    assert record.source_line == 1


def test_content_parts_join_text_and_ignore_other_parts(tmp_path: Path) -> None:
    messages = [
        msg(
            "user",
            [
                {"type": "text", "text": "first"},
                {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}},
                {"type": "text", "text": "second"},
            ],
        ),
        msg("assistant", [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]),
    ]
    [record] = read_one(tmp_path, {"messages": messages}).records
    assert record.turns == [Turn(role=Role.USER, content="first\nsecond")]
    assert record.response == "part one\ntwo"


def test_turns_after_the_judged_response_are_dropped_and_tool_calls_skipped(
    tmp_path: Path,
) -> None:
    messages = [
        msg("user", "What is the weather?"),
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        msg("assistant", "It is sunny."),
        msg("user", "thanks"),  # written after the response: not what it answered
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c2"}]},
    ]
    [record] = read_one(tmp_path, {"messages": messages}).records
    assert record.response == "It is sunny."
    assert record.turns == [
        Turn(role=Role.USER, content="What is the weather?"),
        Turn(role=Role.TOOL, content="sunny"),
    ]


def test_messages_beside_a_response_column_are_its_context(tmp_path: Path) -> None:
    history = [msg("user", "hi"), msg("assistant", "hello"), msg("user", "help me")]
    [record] = read_one(tmp_path, {"messages": history, "response": "Sure."}).records
    assert record.response == "Sure."
    assert [t.content for t in record.turns] == ["hi", "hello", "help me"]
    # The same response repeated at the end of the list is not counted twice.
    both = [*history, msg("assistant", "Sure.")]
    [record] = read_one(tmp_path, {"messages": both, "response": "Sure."}).records
    assert [t.content for t in record.turns] == ["hi", "hello", "help me"]


# --- flat columns and column mapping -------------------------------------------------------------


def test_flat_prompt_and_response(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "flat.jsonl",
        [{"id": "p", "prompt": "Can you help?", "response": "Yes."}, {"id": "r", "response": "Ok"}],
    )
    with_prompt, without = read_records(path).records
    assert with_prompt.turns == [Turn(role=Role.USER, content="Can you help?")]
    assert with_prompt.response == "Yes."
    assert without.turns == []
    assert without.response == "Ok"


def test_column_map_from_pairs_maps_columns(tmp_path: Path) -> None:
    columns = ColumnMap.from_pairs(["response=answer", " prompt = question ", "id=uid"])
    assert columns.response == "answer"
    assert columns.prompt == "question"
    assert columns.id == "uid"
    assert columns.region == "region"  # untouched keys keep their defaults
    row = {"uid": "u1", "question": "Q?", "answer": "A.", "response": "not this one"}
    [record] = read_one(tmp_path, row, columns).records
    assert record.id == "u1"
    assert record.turns == [Turn(role=Role.USER, content="Q?")]
    assert record.response == "A."
    # "response" is not the response column under this mapping, so it is kept as an extra.
    assert record.meta.extra == {"response": "not this one"}
    # The missing-response reason names the mapped column, not the default one.
    missing = read_one(tmp_path, {"question": "Q?"}, columns)
    assert reasons(missing) == [(1, "missing response: no 'answer' column")]


def test_column_map_from_pairs_errors() -> None:
    expected = "id, messages, prompt, response, region, model_id, user_risk_tier"
    with pytest.raises(ValueError) as unknown:
        ColumnMap.from_pairs(["colour=blue"])
    assert "'colour'" in str(unknown.value)
    assert expected in str(unknown.value)
    with pytest.raises(ValueError) as malformed:
        ColumnMap.from_pairs(["response"])
    assert "'response'" in str(malformed.value)
    assert expected in str(malformed.value)
    with pytest.raises(ValueError, match="malformed"):
        ColumnMap.from_pairs(["response="])
    with pytest.raises(ValueError, match="mapped twice"):
        ColumnMap.from_pairs(["response=a", "response=b"])
    with pytest.raises(ValueError, match="mapped to both 'prompt' and 'response'"):
        ColumnMap.from_pairs(["response=prompt"])


def test_column_map_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError):
        ColumnMap(colour="x")  # type: ignore[call-arg]


# --- ids -----------------------------------------------------------------------------------------


def test_derived_ids_are_stable_and_content_based(tmp_path: Path) -> None:
    rows = [
        {"prompt": "hello", "response": "first answer"},
        {"prompt": "hello", "response": "second answer"},
    ]
    path = write_jsonl(tmp_path / "noid.jsonl", rows)
    first = [r.id for r in read_records(path).records]
    second = [r.id for r in read_records(path).records]
    assert first == second
    assert first[0] != first[1]
    # The id is the record's content hash: turns, response and metadata.
    expected = "sha-" + read_records(path).records[0].content_hash()[:16]
    assert first[0] == expected
    # Same conversation and reply from another model: another record, not a duplicate.
    other = write_jsonl(tmp_path / "models.jsonl", [{**rows[0], "model_id": "bot-a"},
                                                    {**rows[0], "model_id": "bot-b"}])
    result = read_records(other)
    assert len({r.id for r in result.records}) == 2 and not result.quarantined
    # The id does not depend on the line the row is on.
    moved = write_jsonl(tmp_path / "moved.jsonl", ["", "", rows[0]])
    [record] = read_records(moved).records
    assert record.id == expected
    assert record.source_line == 3


def test_int_id_becomes_str_and_blank_id_is_derived(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"id": 7, "response": "a"}, {"id": "  ", "response": "b"}, {"id": True, "response": "c"}],
    )
    result = read_records(path)
    assert result.records[0].id == "7"
    assert result.records[1].id.startswith("sha-")
    assert reasons(result) == [(3, "wrong type: 'id' must be a string or an integer, got bool")]


# --- bad rows ------------------------------------------------------------------------------------


def test_every_bad_row_kind_is_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    bad_json = '{"id": "x", "response": "unterminated'
    lines: list[Any] = [
        {"id": "good1", "prompt": "hi", "response": "Hello there."},  # 1
        bad_json,  # 2
        b'{"id": "u", "response": "caf\xe9"}',  # 3: latin-1, not UTF-8
        "[1, 2, 3]",  # 4
        {"id": "nr", "prompt": "hi"},  # 5
        {"id": "er", "response": "   "},  # 6
        {"id": "wt", "response": 42},  # 7
        {"id": "good1", "prompt": "hi", "response": "Something else."},  # 8
        {"id": "rt", "response": "fine", "user_risk_tier": "x"},  # 9
        {"id": "good1", "prompt": "hi", "response": "Hello there."},  # 10: identical duplicate
        "",  # 11: blank, skipped
        {"id": "wm", "messages": "not a list"},  # 12
        {"id": "na", "messages": [msg("user", "hi")]},  # 13
        {"id": "nrole", "messages": [msg("user", "hi"), {"content": "x"}]},  # 14
        {"id": "brole", "messages": [{"role": "bot", "content": "x"}]},  # 15
        {"id": "ea", "messages": [msg("user", "hi"), msg("assistant", " \n")]},  # 16
        {"id": "good2", "response": "Take care.", "user_risk_tier": "High"},  # 17
        '"just a string"',  # 18
        {"id": "nul", "response": None},  # 19
        {"id": "wp", "prompt": ["a"], "response": "x"},  # 20
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    result = read_records(path)

    assert [r.id for r in result.records] == ["good1", "good2"]
    assert [r.source_line for r in result.records] == [1, 17]
    assert result.records[1].meta.user_risk_tier is RiskTier.HIGH
    assert reasons(result) == [
        (2, f"invalid JSON: {json_error(bad_json)}"),
        (3, "invalid UTF-8"),
        (4, "expected a JSON object, got array"),
        (5, "missing response: no 'response' column"),
        (6, "empty response"),
        (7, "wrong type: 'response' must be a string, got int"),
        (8, "duplicate id 'good1' with different content (first seen on line 1)"),
        (9, "wrong type: 'user_risk_tier' must be one of low, medium, high, unknown, got 'x'"),
        (12, "wrong type: 'messages' must be a list, got str"),
        (13, "missing response: no assistant turn in 'messages'"),
        (14, "wrong type: 'messages' item 2 has no 'role'"),
        (
            15,
            "wrong type: 'messages' item 1 has role 'bot', expected one of system, user, "
            "assistant, tool",
        ),
        (16, "empty response"),
        (18, "expected a JSON object, got string"),
        (19, "missing response: 'response' is null"),
        (20, "wrong type: 'prompt' must be a string, got list"),
    ]
    assert result.duplicates_identical == 1
    assert result.rows_read == 19  # the blank line is not a row
    assert_accounted(result)
    assert {q.source for q in result.quarantined} == {str(path)}


def test_quarantine_raw_is_the_complete_original_line(tmp_path: Path) -> None:
    text = '{"id": "x", "response": "   ", "note": "ünïcode ✓"}'
    path = write_jsonl(tmp_path / "raw.jsonl", [text, b'{"r": "\xff\xfe"}', "not json"])
    result = read_records(path)
    assert [q.raw for q in result.quarantined] == [text, '{"r": "\\xff\\xfe"}', "not json"]


def test_crlf_line_endings_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "response": "x"}\r\n\r\n{"id": "b"}\r\n')
    result = read_records(path)
    assert [r.id for r in result.records] == ["a"]
    assert reasons(result) == [(3, "missing response: no 'response' column")]
    assert result.quarantined[0].raw == '{"id": "b"}'


# --- metadata and extra columns ------------------------------------------------------------------


def test_extra_columns_are_kept_in_meta_extra(tmp_path: Path) -> None:
    row = {
        "id": "e",
        "response": "x",
        "region": "GB",
        "model": "bot-1",  # accepted for model_id when there is no model_id column
        "gold_label": "HARMFUL",
        "category": "self_harm",
        "score": 0.5,
        "flag": True,
        "missing": None,
        "tags": ["a", "b"],
    }
    [record] = read_one(tmp_path, row).records
    assert record.meta.region == "GB"
    assert record.meta.model_id == "bot-1"
    assert record.meta.extra == {
        "gold_label": "HARMFUL",
        "category": "self_harm",
        "score": 0.5,
        "flag": True,
        "missing": None,
        "tags": '["a", "b"]',
    }


def test_model_column_is_an_extra_when_model_id_is_given(tmp_path: Path) -> None:
    [record] = read_one(tmp_path, {"response": "x", "model_id": "m1", "model": "m2"}).records
    assert record.meta.model_id == "m1"
    assert record.meta.extra == {"model": "m2"}


def test_metadata_object_fills_meta_and_extra(tmp_path: Path) -> None:
    row = {
        "response": "x",
        "region": "US",
        "metadata": {
            "region": "FR",  # the top-level column wins
            "model_id": "bot-2",
            "user_risk_tier": "medium",
            "gold_label": "SAFE",
            "nested": {"k": 1},
        },
    }
    [record] = read_one(tmp_path, row).records
    assert record.meta.region == "US"
    assert record.meta.model_id == "bot-2"
    assert record.meta.user_risk_tier is RiskTier.MEDIUM
    assert record.meta.extra == {"gold_label": "SAFE", "nested": '{"k": 1}'}


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_multiline_field_then_bad_row_reports_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "id,prompt,response,gold_label\n"  # 1
        'a,hi,"first line\n'  # 2
        "second line\n"  # 3
        'third line",SAFE\n'  # 4
        "\n"  # 5: blank, skipped
        "b,hi,,HARMFUL\n"  # 6: empty response
        'c,"multi\n'  # 7
        'line prompt",ok,\n'  # 8
        "d,hi,   ,SAFE\n",  # 9
        encoding="utf-8",
        newline="",
    )
    result = read_records(path)
    [good, multi] = result.records
    assert good.id == "a"
    assert good.response == "first line\nsecond line\nthird line"
    assert good.source_line == 2
    assert good.meta.extra == {"gold_label": "SAFE"}
    assert multi.id == "c"
    assert multi.turns == [Turn(role=Role.USER, content="multi\nline prompt")]
    assert multi.source_line == 7
    assert multi.meta.extra == {"gold_label": None}  # an empty cell is absent
    assert reasons(result) == [(6, "empty response"), (9, "empty response")]
    assert json.loads(result.quarantined[0].raw) == {
        "id": "b",
        "prompt": "hi",
        "response": "",
        "gold_label": "HARMFUL",
    }
    assert result.rows_read == 4
    assert_accounted(result)


def test_csv_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "fields.csv"
    path.write_text(
        "id,response\nok,fine\nmore,x,extra\nfewer\nok2,good\n", encoding="utf-8", newline=""
    )
    result = read_records(path)
    assert [r.id for r in result.records] == ["ok", "ok2"]
    assert reasons(result) == [
        (3, "wrong number of fields: expected 2, got 3"),
        (4, "wrong number of fields: expected 2, got 1"),
    ]
    assert [json.loads(q.raw) for q in result.quarantined] == [["more", "x", "extra"], ["fewer"]]


def test_csv_messages_column_holds_json(tmp_path: Path) -> None:
    messages = [msg("user", "hi, there"), msg("assistant", 'He said "no".')]
    frame = pd.DataFrame(
        {
            "id": ["m1", "m2", "m3"],
            "messages": [json.dumps(messages), "[not json", ""],
            "response": ["", "", "flat"],
            "user_risk_tier": ["low", "", ""],
        }
    )
    path = tmp_path / "messages.csv"
    frame.to_csv(path, index=False)
    result = read_records(path)
    [from_messages, flat] = result.records
    assert from_messages.response == 'He said "no".'
    assert from_messages.turns == [Turn(role=Role.USER, content="hi, there")]
    assert from_messages.meta.user_risk_tier is RiskTier.LOW
    assert flat.response == "flat"
    assert flat.meta.user_risk_tier is None
    assert reasons(result) == [(3, f"invalid JSON in column 'messages': {json_error('[not json')}")]


def test_csv_invalid_utf8_row_is_quarantined_alone(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"id,response\na,fine\nb,caf\xe9\nc,also fine\n")
    result = read_records(path)
    assert [r.id for r in result.records] == ["a", "c"]
    assert reasons(result) == [(3, "invalid UTF-8")]
    assert result.quarantined[0].raw == '["b", "caf\\xe9"]'


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_round_trip_with_messages_and_row_numbers(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [1, None, 3, 4],
            "messages": [
                [msg("system", "be kind"), msg("user", "hi"), msg("assistant", "hello")],
                None,
                [msg("user", "only a user turn")],
                [msg("user", "q"), msg("assistant", "a")],
            ],
            "response": [None, "flat answer", None, None],
            "region": ["GB", None, "US", "US"],
            "gold_label": ["SAFE", "HARMFUL", None, "SAFE"],
        }
    )
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    result = read_records(path)
    first, second, fourth = result.records
    assert first.id == "1"  # pandas stored the ids as floats because of the null
    assert first.turns == [
        Turn(role=Role.SYSTEM, content="be kind"),
        Turn(role=Role.USER, content="hi"),
    ]
    assert first.response == "hello"
    assert first.meta.region == "GB"
    assert first.meta.extra == {"gold_label": "SAFE"}
    assert first.source_line == 1
    assert second.id.startswith("sha-")
    assert second.response == "flat answer"
    assert second.meta.region is None
    assert second.source_line == 2
    assert fourth.id == "4"
    assert fourth.source_line == 4
    assert reasons(result) == [(3, "missing response: no assistant turn in 'messages'")]
    raw = json.loads(result.quarantined[0].raw)
    assert raw["messages"] == [msg("user", "only a user turn")]
    assert raw["id"] == 3
    assert result.rows_read == 4


def test_parquet_with_pq_extension_and_a_saved_index(tmp_path: Path) -> None:
    frame = pd.DataFrame({"response": ["a", "b", "c"], "k": ["x", "y", "z"]}).iloc[[2, 0]]
    path = tmp_path / "rows.pq"
    frame.to_parquet(path)  # the non-default index is stored as a column
    result = read_records(path)
    assert [(r.response, r.meta.extra, r.source_line) for r in result.records] == [
        ("c", {"k": "z"}, 1),
        ("a", {"k": "x"}, 2),
    ]


# --- unreadable inputs ---------------------------------------------------------------------------


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as missing:
        read_records(tmp_path / "nope.jsonl")
    assert str(tmp_path / "nope.jsonl") in str(missing.value)

    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path)

    unknown = tmp_path / "log.txt"
    unknown.write_text('{"response": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError) as bad_ext:
        read_records(unknown)
    assert str(unknown) in str(bad_ext.value)
    assert "jsonl, csv, parquet" in str(bad_ext.value)
    # An explicit format reads a file of any name.
    assert [r.response for r in read_records(unknown, fmt="jsonl").records] == ["x"]
    with pytest.raises(InputError, match="unknown format 'xml'"):
        read_records(unknown, fmt="xml")

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(InputError, match="cannot read Parquet") as bad_parquet:
        read_records(garbage)
    assert str(garbage) in str(bad_parquet.value)

    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="cannot read the CSV header"):
        read_records(empty)

    repeated = tmp_path / "repeated.csv"
    repeated.write_text("id,response,response\n1,a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="repeated columns"):
        read_records(repeated)


# --- quarantine file -----------------------------------------------------------------------------


def test_write_quarantine_round_trip_and_atomic_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out" / "quarantine.jsonl"
    items = [
        Quarantined(source="in.jsonl", line=2, reason="invalid JSON: x", raw='{"a": "ünï ✓'),
        Quarantined(source="in.jsonl", line=9, reason="empty response", raw="line\nbreak"),
    ]
    write_quarantine(target, items)
    text = target.read_text(encoding="utf-8")
    assert "ünï ✓" in text  # ensure_ascii=False: readable as written
    assert [Quarantined.model_validate_json(line) for line in text.splitlines()] == items

    write_quarantine(target, items[1:])
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [Quarantined.model_validate_json(line) for line in lines] == items[1:]

    write_quarantine(target, [])  # a clean run clears the previous quarantine
    assert target.read_text(encoding="utf-8") == ""
    assert os.listdir(target.parent) == ["quarantine.jsonl"]  # no temp files left behind


def test_write_quarantine_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "quarantine.jsonl"
    old = [Quarantined(source="s", line=1, reason="r", raw="x")]
    write_quarantine(target, old)

    class Boom(Quarantined):
        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_quarantine(target, [*old, Boom(source="s", line=2, reason="r", raw="y")])
    assert [Quarantined.model_validate_json(x) for x in target.read_text().splitlines()] == old
    assert os.listdir(tmp_path) == ["quarantine.jsonl"]


def test_quarantine_from_a_real_read_round_trips(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [b"\xff\xfe", "{bad", {"response": ""}])
    result = read_records(path)
    target = tmp_path / "q.jsonl"
    write_quarantine(target, result.quarantined)
    back = [Quarantined.model_validate_json(x) for x in target.read_text("utf-8").splitlines()]
    assert back == result.quarantined
    assert [q.line for q in back] == [1, 2, 3]


def test_odd_shapes_never_raise_and_every_row_is_accounted_for(tmp_path: Path) -> None:
    odd: list[Any] = [
        {"messages": {"role": "user"}},
        {"messages": [None]},
        {"messages": [{"role": ["user"], "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]},
        {"messages": [{"role": "user", "content": ["x"]}]},
        {"messages": [{"role": "assistant", "content": [{"type": "text", "text": 1}]}]},
        {"messages": [{"role": "user", "content": None}, msg("assistant", "x")]},
        {"messages": [{"role": "user"}, msg("assistant", "x")]},
        {"messages": [msg("assistant", None)]},
        {"response": "x", "region": 5},
        {"response": "x", "user_risk_tier": 2},
        {"response": "x", "metadata": {"user_risk_tier": "extreme"}},
        {"id": 1.5, "response": "x"},
        {"id": ["a"], "response": "x"},
        "null",
        "1e999",
        "[" * 100_000,
    ]
    result = read_records(write_jsonl(tmp_path / "odd.jsonl", odd))
    assert result.records == []
    assert [line for line, _ in reasons(result)] == list(range(1, len(odd) + 1))
    assert reasons(result)[:15] == [
        (1, "wrong type: 'messages' must be a list, got dict"),
        (2, "wrong type: 'messages' item 1 must be an object, got NoneType"),
        (
            3,
            "wrong type: 'messages' item 1 has role ['user'], expected one of system, user, "
            "assistant, tool",
        ),
        (
            4,
            "wrong type: 'messages' item 1 'content' must be a string, a list of content parts "
            "or null, got int",
        ),
        (5, "missing response: no assistant turn in 'messages'"),  # not a text part: ignored
        (6, "wrong type: 'messages' item 1 content part 1 must be an object, got str"),
        (7, "wrong type: 'messages' item 1 content part 1 'text' must be a string, got int"),
        (8, "wrong type: 'messages' item 1 'content' is null but role is 'user'"),
        (9, "wrong type: 'messages' item 1 has no 'content'"),
        (10, "empty response"),
        (11, "wrong type: 'region' must be a string, got int"),
        (
            12,
            "wrong type: 'user_risk_tier' must be one of low, medium, high, unknown, got 2",
        ),
        (
            13,
            "wrong type: 'metadata.user_risk_tier' must be one of low, medium, high, unknown, "
            "got 'extreme'",
        ),
        (14, "wrong type: 'id' must be a string or an integer, got float"),
        (15, "wrong type: 'id' must be a string or an integer, got list"),
    ]
    assert reasons(result)[15:17] == [
        (16, "expected a JSON object, got null"),
        (17, "expected a JSON object, got number"),
    ]
    assert reasons(result)[17][1].startswith("invalid JSON: ")
    assert_accounted(result)


def test_developer_role_and_tool_call_turn_without_content(tmp_path: Path) -> None:
    messages = [
        msg("developer", "Be brief."),
        msg("user", "hi"),
        {"role": "assistant", "tool_calls": [{"id": "c1"}]},  # no content key at all
        msg("assistant", "Hello."),
    ]
    [record] = read_one(tmp_path, {"messages": messages, "metadata": {}}).records
    assert record.turns == [
        Turn(role=Role.SYSTEM, content="Be brief."),
        Turn(role=Role.USER, content="hi"),
    ]
    assert record.meta.extra == {}


def test_lone_surrogate_escapes_are_quarantined_not_raised(tmp_path: Path) -> None:
    reason = "invalid Unicode: a lone surrogate (such as \\ud800) cannot be encoded as UTF-8"
    path = write_jsonl(
        tmp_path / "surrogates.jsonl",
        [
            '{"response": "half a pair \\udc00"}',  # the derived id cannot be hashed
            '{"id": "a\\ud800", "response": "x"}',
            '{"response": "x", "note\\ud800": 1}',
            {"response": "fine"},
        ],
    )
    result = read_records(path)
    assert [r.response for r in result.records] == ["fine"]
    assert reasons(result) == [(1, reason), (2, reason), (3, reason)]
    csv_path = tmp_path / "surrogates.csv"
    csv_path.write_text(
        'id,messages\nm,"[{""role"": ""assistant"", ""content"": ""\\ud800""}]"\n',
        encoding="utf-8",
    )
    assert reasons(read_records(csv_path)) == [(2, reason)]
    write_quarantine(tmp_path / "q.jsonl", result.quarantined)  # and the raw text is writable
