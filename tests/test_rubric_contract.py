"""Every rubric folder and every labelled data file is under contract, with no per-rubric test code:
a new rubric or data file is picked up by these parametrised tests as soon as it exists.

- schema and render: the rubric loads, every sub-question reaches the judge's prompt with its
  lexicon terms, and the shared tone partial is included;
- examples: the clinician's answers give the expected label under the rule, and so does the LLM
  tier when a judge gives those answers over HTTP (render, schema, parse, rule, end to end);
- labelled data: at least 60 rows, every label, every answer consistent with the gold label, and
  readable by `psyjudge score` as an ordinary chat log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from judge.cascade import Cascade
from judge.datasets import LabelledRow, check_labelled, coverage, read_labelled
from judge.framing import delimiter_tag, neutralise
from judge.ingest import read_records
from judge.models import JudgeConfig, JudgeModel
from judge.rubrics import Rubric, available_rubrics, builtin_rubrics_dir, check_examples, load_rubric
from judge.runner import judge_all
from judge.schema import Label, Record
from judge.tiers.llm import LLMTier, build_messages
from tests.conftest import REPO
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.oracle_judge import OracleJudge

BUILTIN = sorted(available_rubrics())
DATA_FILES = sorted((REPO / "datasets").glob("*/examples.jsonl"))
MIN_ROWS = 60


def test_the_library_has_the_clinical_rubrics() -> None:
    assert {"self_harm", "eating_disorders", "substance_misuse", "dangerous_instructions"} <= set(BUILTIN)


@pytest.mark.parametrize("rubric_id", BUILTIN)
def test_rubric_schema_and_render(rubric_id: str) -> None:
    rubric = load_rubric(rubric_id)
    record = Record(id="x", turns=[], response="zq-judged-text-zq", meta={"region": "GB"})  # type: ignore[arg-type]
    messages, _, _ = build_messages(record, rubric)
    system, user = messages[0]["content"], messages[1]["content"]
    for q in rubric.spec.sub_questions:
        assert f"- {q.id}: " in system
        assert q.rationale and q.source
        if q.lexicon:  # a clinician's lexicon reaches the judge in full
            assert all(term in system for term in rubric.spec.lexicons[q.lexicon].terms)
    assert "judgemental" in rubric.question_ids, "every rubric includes the tone_and_stance partial"
    assert "zq-judged-text-zq" in user and "zq-judged-text-zq" not in system  # judged text only in the user turn
    if rubric.spec.verdict.applies_when is not None:
        assert any(o.rule == "not_applicable" for o in check_examples(rubric)), \
            "a rubric with applies_when shows an off-topic example"


def _oracle_labels(rubric: Rubric, rows: Sequence[tuple[Record, dict[str, str]]],
                   tmp_path: Path) -> Iterator[tuple[str, str, str | None]]:
    """(record id, label, error) for each row when a judge gives exactly the gold answers."""
    by_tag = {}
    for record, answers in rows:
        conversation = [{"role": t.role.value, "content": neutralise(t.content)} for t in record.turns]
        tag = delimiter_tag(rubric.key, record.response, json.dumps(conversation, sort_keys=True))
        by_tag[tag] = answers
    oracle = OracleJudge(by_tag)
    with FakeOpenAIServer(responder=oracle) as server:
        config = JudgeConfig(model="openai/oracle", api_base=server.base_url, cache_dir=tmp_path / "cache",
                             use_cache=False, retry_initial_wait_s=0.0, retry_max_wait_s=0.0)
        verdicts = judge_all([(record, rubric) for record, _ in rows], Cascade([LLMTier(JudgeModel(config))]),
                             concurrency=16)
    assert not oracle.unknown_tags
    for record, _ in rows:
        verdict = verdicts[(record.id, rubric.key)]
        yield record.id, verdict.label_name, verdict.error


@pytest.mark.parametrize("rubric_id", BUILTIN)
def test_rubric_examples_through_the_rule_and_the_llm_tier(rubric_id: str, tmp_path: Path) -> None:
    rubric = load_rubric(rubric_id)
    outcomes = check_examples(rubric)
    assert all(o.passed for o in outcomes), [o for o in outcomes if not o.passed]
    assert {o.expected for o in outcomes} == set(Label), "examples cover every label"
    expected = {f"{rubric.id}:{ex.id}": ex.expected.value for ex in rubric.spec.examples}
    rows = [(Record(id=f"{rubric.id}:{ex.id}", turns=ex.turns, response=ex.response,
                    meta={"region": ex.region}),  # type: ignore[arg-type]
             {q: v.value for q, v in ex.answers.items()}) for ex in rubric.spec.examples]
    for record_id, label, error in _oracle_labels(rubric, rows, tmp_path):
        assert (label, error) == (expected[record_id], None), record_id


def test_every_builtin_rubric_has_labelled_data() -> None:
    covered = {read_labelled(path)[0].rubric for path in DATA_FILES}
    assert set(BUILTIN) <= covered


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.parent.name)
def test_labelled_data_is_consistent_with_its_rubric(path: Path, tmp_path: Path) -> None:
    rows = read_labelled(path)
    (rubric_id,) = {row.rubric for row in rows}
    rubric = load_rubric(rubric_id)
    assert check_labelled(rubric, rows) == []
    counts = coverage(rows)
    assert len(rows) >= MIN_ROWS and set(counts["labels"]) == {label.value for label in Label}
    assert (path.parent / "CARD.md").is_file(), "every data file has a data card"
    assert rubric.version in (path.parent / "CARD.md").read_text(), "the card names the rubric version"
    # The same file is an ordinary chat log for `psyjudge score`: nothing quarantined, same records.
    ingested = read_records(path)
    assert not ingested.quarantined and [r.id for r in ingested.records] == [row.id for row in rows]
    assert all(r.response == row.response and r.turns == row.messages and r.meta.region == row.region
               for r, row in zip(ingested.records, rows, strict=True))


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.parent.name)
def test_labelled_data_through_the_llm_tier(path: Path, tmp_path: Path) -> None:
    rows: list[LabelledRow] = read_labelled(path)
    rubric = load_rubric(rows[0].rubric)
    gold = {row.id: row.gold_label.value for row in rows}
    pairs = [(row.record(), {q: v.value for q, v in row.gold_answers.items()}) for row in rows]
    results = list(_oracle_labels(rubric, pairs, tmp_path))
    assert [(rid, label, error) for rid, label, error in results if label != gold[rid] or error] == []


def test_builtin_rubrics_ship_in_the_package() -> None:
    for rubric_id in BUILTIN:
        assert (builtin_rubrics_dir() / rubric_id / "rubric.yaml").is_file()
