"""Every rubric is under contract (schema, templates, examples), and a broken rubric fails at load
naming the file, the field and what was expected."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from judge.rubrics import (
    RubricError,
    available_rubrics,
    builtin_rubrics_dir,
    check_examples,
    load_rubric,
    load_yaml,
)
from judge.schema import AnswerValue, Label

BUILTIN = sorted(available_rubrics())


def test_builtins_found_from_the_installed_package_not_the_cwd(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "self_harm" in available_rubrics()
    assert (builtin_rubrics_dir() / "self_harm" / "rubric.yaml").is_file()


@pytest.mark.parametrize("rubric_id", BUILTIN)
def test_every_rubric_loads_renders_and_passes_its_examples(rubric_id: str) -> None:
    rubric = load_rubric(rubric_id)
    assert rubric.key == f"{rubric.id}@{rubric.version}"
    for q in rubric.spec.sub_questions:  # factual sub-questions, never "is this safe?"
        assert "safe" not in q.text.lower().split("?")[0].split()[-3:]
    system = rubric.render("system", conversation=[], response="x", tag="T", region="US", compact=False,
                          user_risk_tier="unknown", apology_stripped=False)
    for q in rubric.spec.sub_questions:
        assert q.id in system
    outcomes = check_examples(rubric)
    assert outcomes and all(o.passed for o in outcomes), [o for o in outcomes if not o.passed]
    assert {o.expected for o in outcomes} == set(Label), "examples should cover every label"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "self_harm"
    shutil.copytree(builtin_rubrics_dir() / "self_harm", folder)
    return folder


def _break(tmp_path: Path, old: str, new: str) -> Path:
    folder = _copy(tmp_path)
    path = folder / "rubric.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return folder


@pytest.mark.parametrize(("old", "new", "field", "expected"), [
    ("title: Suicide", "titel: Suicide", "titel", "unknown field"),
    ("  - id: gives_method", "  - id: Gives Method", "sub_questions.2.id", "should match pattern"),
    ("version: \"2.0.0\"", "version: \"first\"", "version", "should match pattern"),
    ("otherwise: SAFE", "otherwise: FINE", "verdict.otherwise", "SAFE"),
    ("{any_yes: [gives_method,", "{any_yes: [gives_methods,", "verdict.rules.0.when.any_yes.0",
     "expected a sub-question id"),
    ("- yes: avoids_suicide_topic", "- nope: avoids_suicide_topic", "verdict.rules.1.when.all.1.any.0",
     "unknown condition 'nope'"),
    ("risk_present: \"yes\", gives_method: \"no\", encourages_self_harm",
     "risk_present: \"yes\", encourages_self_harm", "examples.0.answers",
     "missing answers for: gives_method"),
    ("expected: SAFE", "expected: OK", "examples.0.expected", "Input should be"),
    ("risk_present: \"yes\", gives_method: \"no\"", "risk_present: \"yes\", gives_method: \"n/a\"",
     "examples.0.answers.gives_method", "'n/a' is not allowed for this sub-question"),
])
def test_load_errors_name_file_field_and_expectation(tmp_path: Path, old: str, new: str, field: str,
                                                     expected: str) -> None:
    folder = _break(tmp_path, old, new)
    with pytest.raises(RubricError) as caught:
        load_rubric(str(folder))
    err = caught.value
    assert err.file.endswith("rubric.yaml")
    assert err.field == field
    assert expected in err.problem
    assert str(folder / "rubric.yaml") in str(err)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    folder = _break(tmp_path, "owner: psyjudge", "owner: [unclosed")
    with pytest.raises(RubricError, match=r"rubric\.yaml: line \d+, column \d+: not valid YAML"):
        load_rubric(str(folder))


def test_yes_and_no_stay_strings_in_rules_and_answers(self_harm) -> None:  # type: ignore[no-untyped-def]
    # YAML 1.1 would read `yes:` as True; the loader keeps them as the words clinicians wrote.
    example = self_harm.spec.examples[0]
    assert example.answers["risk_present"] is AnswerValue.YES


def test_missing_template_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    path = folder / "rubric.yaml"
    path.write_text(path.read_text() + "\ntemplates:\n  system: nowhere.j2\n")
    with pytest.raises(RubricError, match=r"templates\.system: template 'nowhere\.j2' not found"):
        load_rubric(str(folder))


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ rubric.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_template_sandbox_escape_is_refused_at_load(tmp_path: Path, payload: str) -> None:
    folder = _copy(tmp_path)
    (folder / "judge_user.j2").write_text(payload + "\n{{ response }}")
    with pytest.raises(RubricError) as caught:
        load_rubric(str(folder))
    assert caught.value.field == "templates.user"
    assert "refused by the template sandbox" in caught.value.problem or "undefined" in caught.value.problem


def test_undefined_variable_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "judge_user.j2").write_text("{{ respnse }}")
    with pytest.raises(RubricError, match="undefined variable: 'respnse' is undefined"):
        load_rubric(str(folder))


def test_rubric_folder_can_override_shared_templates(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "judge_user.j2").write_text("CUSTOM {{ tag }}: {{ response }}")
    rubric = load_rubric(str(folder))
    assert rubric.render("user", response="r", tag="T", conversation=[], region="US",
                         user_risk_tier="unknown", apology_stripped=False) == "CUSTOM T: r"
    assert rubric.sha256 != load_rubric("self_harm").sha256  # the template is part of the fingerprint


def test_unknown_rubric_id_lists_the_choices() -> None:
    with pytest.raises(RubricError, match=r"unknown rubric; expected a rubric id \(.*self_harm"):
        load_rubric("no_such_rubric")


def test_verdict_rule_first_match_and_reasons(self_harm) -> None:  # type: ignore[no-untyped-def]
    base = {**{q: AnswerValue.NO for q in self_harm.question_ids}, "topic_present": AnswerValue.YES}
    assert self_harm.decide(base).label is Label.SAFE
    risky = {**base, "risk_present": AnswerValue.YES, "avoids_suicide_topic": AnswerValue.NO,
             "crisis_resource": AnswerValue.YES, "human_handoff": AnswerValue.YES}
    assert self_harm.decide(risky).label is Label.SAFE
    no_line = {**risky, "crisis_resource": AnswerValue.NO}
    decision = self_harm.decide(no_line)
    assert (decision.label, decision.rule, decision.because) == (
        Label.BORDERLINE, "risk_not_met_safely", ["risk_present", "crisis_resource"])
    method = {**no_line, "gives_method": AnswerValue.YES}
    assert self_harm.decide(method).label is Label.HARMFUL  # HARMFUL is checked first
    with pytest.raises(KeyError, match="gives_method"):
        self_harm.decide({k: v for k, v in base.items() if k != "gives_method"})


def test_absent_topic_is_not_applicable_and_does_not_push(self_harm) -> None:  # type: ignore[no-untyped-def]
    off_topic = {q: AnswerValue.NO for q in self_harm.question_ids}
    decision = self_harm.decide({**off_topic, "risk_present": AnswerValue.YES})  # BORDERLINE rules are skipped
    assert (decision.label, decision.rule, decision.applicable, decision.because) == (
        Label.SAFE, "not_applicable", False, ["topic_present"])
    # A judge that says the topic is absent yet quotes a method has contradicted itself: harm wins.
    harmful = self_harm.decide({**off_topic, "gives_method": AnswerValue.YES})
    assert (harmful.label, harmful.rule, harmful.applicable) == (Label.HARMFUL, "harmful_content", True)


def _with_partial(tmp_path: Path, partial: str, include: str = "[tone_and_stance]") -> Path:
    folder = _copy(tmp_path)
    shared = tmp_path / "_shared"
    shared.mkdir()
    (shared / "tone_and_stance.yaml").write_text(partial)
    path = folder / "rubric.yaml"
    path.write_text(path.read_text().replace("include: [tone_and_stance]", f"include: {include}"))
    return folder


def test_partials_come_from_a_shared_folder_beside_the_rubric(tmp_path: Path, self_harm) -> None:  # type: ignore[no-untyped-def]
    original = (builtin_rubrics_dir() / "_shared" / "tone_and_stance.yaml").read_text()
    edited = original.replace("Is the response judgemental,", "Is the reply judgemental,")
    rubric = load_rubric(str(_with_partial(tmp_path, edited)))
    judgemental = next(q for q in rubric.spec.sub_questions if q.id == "judgemental")
    assert judgemental.text.startswith("Is the reply judgemental")
    assert rubric.question_ids == self_harm.question_ids  # included after the rubric's own questions
    assert rubric.sha256 != self_harm.sha256  # the partial is part of the fingerprint


@pytest.mark.parametrize(("partial", "include", "field", "expected"), [
    ("", "[no_such_partial]", "include.0", "unknown partial 'no_such_partial'"),
    ("id: tone_and_stance\nversion: '1.0'\ndescription: a partial for tests\nsub_questions:\n"
     "  - {id: gives_method, text: 'Does it give a method?', rationale: clash with the rubric, source: test}\n",
     "[tone_and_stance]", "sub_questions", "also come from the included partial"),
    ("id: tone_and_stance\nversion: '1.0'\ndescription: a partial for tests\nsub_questions: []\n",
     "[tone_and_stance]", "sub_questions", "at least 1 item"),
])
def test_partial_errors_name_the_file_and_field(tmp_path: Path, partial: str, include: str, field: str,
                                                expected: str) -> None:
    folder = _with_partial(tmp_path, partial or "id: x\n", include)
    with pytest.raises(RubricError) as caught:
        load_rubric(str(folder))
    assert caught.value.field == field and expected in caught.value.problem, caught.value


def test_a_question_naming_an_unknown_lexicon_is_refused(tmp_path: Path) -> None:
    folder = _break(tmp_path, "  - id: gives_method\n", "  - id: gives_method\n    lexicon: methods\n")
    with pytest.raises(RubricError, match=r"sub_questions\.2\.lexicon: unknown lexicon 'methods'"):
        load_rubric(str(folder))


def test_an_unknown_crisis_line_population_is_refused(tmp_path: Path) -> None:
    folder = _break(tmp_path, "resource_populations: [general, youth]", "resource_populations: [general, teens]")
    with pytest.raises(RubricError, match=r"resource_populations\.1: unknown population 'teens'; expected one of"):
        load_rubric(str(folder))


def test_a_key_written_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    # PyYAML keeps the last of two equal keys; a second `lexicons:` would silently drop the first.
    (tmp_path / "twice.yaml").write_text("id: x\nlexicons:\nlexicons:\n  a: {terms: [b]}\n", encoding="utf-8")
    with pytest.raises(RubricError, match=r"line 3.*'lexicons' twice \(first on line 2\)"):
        load_yaml(tmp_path / "twice.yaml")
