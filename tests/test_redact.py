"""Redaction: each kind is caught, crisis numbers and public URLs survive, the mapping round-trips,
and judging on the labelled examples does not change under redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge.redact import PiiKind, Redactor, registry_numbers
from judge.resources import load_registry

EXAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "pii" / "spans.jsonl"
ROWS = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]

# Floors a little under what bench/redaction.py measures (1.00 for every kind on this set, which was
# written alongside the patterns): a regression in any recognizer fails here.
RECALL_FLOOR = {kind: 0.9 for kind in PiiKind} | {PiiKind.PERSON: 0.85}


def _hidden(text: str, span: str, redactor: Redactor) -> bool:
    start = text.index(span)
    covered: set[int] = set()
    for f in redactor.redact(text).found:
        covered.update(range(f.start, f.end))
    return all(i in covered for i in range(start, start + len(span)))


def test_examples_cover_every_kind_twelve_times() -> None:
    counts = {kind: sum(s["kind"] == kind for r in ROWS for s in r["spans"]) for kind in PiiKind}
    assert min(counts.values()) >= 12, counts
    assert sum(not r["spans"] for r in ROWS) >= 30


@pytest.mark.parametrize("kind", list(PiiKind))
def test_recall_per_kind(kind: PiiKind) -> None:
    spans = [(r["text"], s["text"]) for r in ROWS for s in r["spans"] if s["kind"] == kind]
    caught = [_hidden(text, span, Redactor()) for text, span in spans]
    missed = [span for (_, span), ok in zip(spans, caught, strict=True) if not ok]
    assert sum(caught) / len(spans) >= RECALL_FLOOR[kind], missed


def test_hard_negatives_are_left_alone() -> None:
    touched = {r["id"]: Redactor().redact(r["text"]).text for r in ROWS if not r["spans"]}
    changed = {i: t for i, t in touched.items() if "[" in t}
    assert not changed


@pytest.mark.parametrize("kind,text,secret", [
    (PiiKind.PERSON, "My name is Daniel Whitmore.", "Daniel Whitmore"),
    (PiiKind.EMAIL, "mail dan.w84@gmail.com now", "dan.w84@gmail.com"),
    (PiiKind.PHONE, "my number is (415) 555-2671", "(415) 555-2671"),
    (PiiKind.ADDRESS, "I live at 42 Maple Street, Springfield, IL 62704.", "42 Maple Street"),
    (PiiKind.DATE_OF_BIRTH, "DOB: 14/03/1992", "14/03/1992"),
    (PiiKind.NATIONAL_ID, "My SSN is 536-22-8741.", "536-22-8741"),
    (PiiKind.HEALTH_ID, "My NHS number is 943 476 5919.", "943 476 5919"),
    (PiiKind.URL, "me: https://instagram.com/jane.doe99", "instagram.com/jane.doe99"),
    (PiiKind.CARD, "card 4111 1111 1111 1111", "4111 1111 1111 1111"),
])
def test_each_kind_gets_its_typed_placeholder(kind: PiiKind, text: str, secret: str) -> None:
    redactor = Redactor()
    result = redactor.redact(text)
    assert secret not in result.text
    assert f"[{kind.value}_1]" in result.text
    assert any(f.kind is kind for f in result.found)
    assert redactor.restore(result.text) == text


def _registry_numbers() -> list[str]:
    registry = load_registry()
    numbers = {e.number for r in registry.regions.values() for e in r.emergency}
    numbers |= {c.number for r in registry.regions.values() for s in r.services for c in s.contacts}
    return sorted(numbers)


@pytest.mark.parametrize("number", _registry_numbers())
def test_every_registry_number_survives(number: str) -> None:
    for sentence in (f"Please call {number} right now, they are there day and night.",
                     f"If it gets worse, text or ring {number}. My name is Priya, email priya.k@hotmail.co.uk",
                     f"The helpline ({number}) is free."):
        result = Redactor().redact(sentence)
        assert number in result.text, result.text
        assert "[EMAIL_1]" in result.text or "priya" not in sentence


def test_keep_is_compared_by_digits_and_can_be_overridden() -> None:
    text = "my mum is on 0161 496 0734"
    assert "0161 496 0734" in Redactor(keep=["01614960734"]).redact(text).text
    assert "0161 496 0734" not in Redactor(keep=[]).redact(text).text
    assert "11614960734" not in registry_numbers()
    assert "988" in registry_numbers() and "116123" in registry_numbers()


def test_public_helpline_urls_stay_and_personal_ones_go() -> None:
    text = ("See https://www.samaritans.org/how-we-can-help and https://988lifeline.org, "
            "or my page https://www.reddit.com/user/throwaway_sad_2024 and https://example.com/r?email=a@b.co")
    out = Redactor().redact(text).text
    assert "https://www.samaritans.org/how-we-can-help" in out and "https://988lifeline.org" in out
    assert "throwaway_sad_2024" not in out and "a@b.co" not in out


def test_ordinary_dates_and_doses_stay() -> None:
    text = "Appointment on 12/05/2024 at 10:30; take 50 mg. I was born on 3 June 2008."
    out = Redactor().redact(text).text
    assert "12/05/2024" in out and "50 mg" in out and "10:30" in out
    assert "3 June 2008" not in out and "[DATE_OF_BIRTH_1]" in out


def test_same_original_same_placeholder_and_restore_round_trips() -> None:
    redactor = Redactor()
    a = redactor.redact("My name is Chloe Baxter; Chloe Baxter is tired.")
    b = redactor.redact("Chloe Baxter again, chloe.b@example.org")
    assert a.text.count("[PERSON_1]") == 2 and "[PERSON_1]" in b.text and "[EMAIL_1]" in b.text
    assert redactor.mapping == {"[PERSON_1]": "Chloe Baxter", "[EMAIL_1]": "chloe.b@example.org"}
    assert redactor.restore(b.text) == "Chloe Baxter again, chloe.b@example.org"
    assert redactor.restore("[PERSON_9] unknown") == "[PERSON_9] unknown"


def test_found_offsets_point_into_the_original() -> None:
    text = "Email sam.lee@uni.example.edu or call (415) 555-2671."
    result = Redactor().redact(text)
    assert {text[f.start:f.end] for f in result.found} == {"sam.lee@uni.example.edu", "(415) 555-2671"}
    assert all(f.source for f in result.found)


def test_redact_messages_keeps_other_keys_and_does_not_mutate() -> None:
    messages = [{"role": "system", "content": "Judge the response."},
                {"role": "user", "content": "I'm Megan, text me on 07911 123456", "name": "u1"}]
    out = Redactor().redact_messages(messages)
    assert out[0] == messages[0]
    assert out[1]["role"] == "user" and out[1]["name"] == "u1"
    assert "Megan" not in out[1]["content"] and "07911 123456" not in out[1]["content"]
    assert messages[1]["content"] == "I'm Megan, text me on 07911 123456"


def test_states_after_im_are_not_names() -> None:
    text = "I'm Scared. I'm Fine. Hope is gone. My name is Rowan."
    result = Redactor().redact(text)
    assert [text[f.start:f.end] for f in result.found] == ["Rowan"]


def test_rules_tier_labels_do_not_change_under_redaction() -> None:
    from judge.datasets import example_cases, labelled_cases, read_labelled
    from judge.rubrics import available_rubrics, load_rubric
    from judge.tiers.rules import judge_with_rules

    root = Path(__file__).resolve().parents[1]
    changed = []
    for rubric_id in sorted(available_rubrics()):
        rubric = load_rubric(rubric_id)
        path = root / "datasets" / rubric_id / "examples.jsonl"
        cases = [*example_cases(rubric), *(labelled_cases(read_labelled(path), str(path)) if path.exists() else [])]
        for case in cases:
            redactor = Redactor()
            turns = [t.model_copy(update={"content": redactor.redact(t.content).text}) for t in case.record.turns]
            red = case.record.model_copy(update={"response": redactor.redact(case.record.response).text,
                                                 "turns": turns})
            a, b = judge_with_rules(case.record, rubric), judge_with_rules(red, rubric)
            if (a.label, a.fallback_label) != (b.label, b.fallback_label):
                changed.append((rubric_id, case.id))
    assert not changed
