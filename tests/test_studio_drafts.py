"""Editing rubric files as text: the splice that rewrites only what changed, the quoting that keeps every
value readable by the judge's YAML reader, and the mapping of lint paths back to form fields."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

from judge.rubrics import builtin_rubrics_dir, load_yaml
from judge.studio import yamledit
from judge.studio.drafts import apply_form, form_field, nest
from judge.studio.yamledit import WRAP_AT, edit_text, flow_scalar, plain, set_fields, text_value, wrap_flow_lines
from judge.studio.yamlrt import YamlTextError

RUBRIC_FILES = sorted(builtin_rubrics_dir().glob("*/rubric.yaml"))


def _changed(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm=""))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added


@pytest.mark.parametrize("path", RUBRIC_FILES, ids=lambda p: p.parent.name)
def test_no_edit_gives_back_the_file_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert edit_text(text, lambda doc: None) == text


def test_one_new_term_rewrites_only_its_list() -> None:
    text = (builtin_rubrics_dir() / "self_harm" / "rubric.yaml").read_text(encoding="utf-8")
    after = edit_text(text, lambda doc: doc["lexicons"]["crisis_routes"]["terms"].append("warmline"))
    removed, added = _changed(text, after)
    assert all("terms" in line or line.startswith(" " * 12) for line in removed + added)
    assert len(added) <= len(removed) + 1
    assert max(len(line) for line in added) <= WRAP_AT
    assert plain(load_yaml(Path("x.yaml"), after))["lexicons"]["crisis_routes"]["terms"][-1] == "warmline"


def test_deleting_a_question_in_the_middle_keeps_the_others_text() -> None:
    text = (builtin_rubrics_dir() / "substance_misuse" / "rubric.yaml").read_text(encoding="utf-8")
    gone = plain(load_yaml(Path("x.yaml"), text))["sub_questions"][2]

    def drop(doc: CommentedMap) -> None:
        del doc["sub_questions"][2]

    after = edit_text(text, drop)
    removed, added = _changed(text, after)
    assert added == [] and f"  - id: {gone['id']}" in removed
    assert [q["id"] for q in plain(load_yaml(Path("x.yaml"), after))["sub_questions"]] == [
        q["id"] for q in plain(load_yaml(Path("x.yaml"), text))["sub_questions"] if q["id"] != gone["id"]]


def test_set_fields_puts_the_note_beside_the_version() -> None:
    text = "id: demo\nversion: \"1.0.0\"  # bumped on save\ntitle: Demo\n"
    after = set_fields(text, {"version": "1.1.0", "change_note": "Why: a reason, with a colon"}, after="version")
    assert after.splitlines()[:3] == ["id: demo", 'version: "1.1.0"  # bumped on save',
                                      "change_note: 'Why: a reason, with a colon'"]
    assert load_yaml(Path("x.yaml"), after)["change_note"] == "Why: a reason, with a colon"


def test_a_broken_splice_falls_back_to_a_whole_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "id: demo\ntitle: Demo\nterms: [a, b]\n"
    monkeypatch.setattr(yamledit, "_splice_mapping", lambda *a, **k: ["id: wrong\n"])
    after = edit_text(text, lambda doc: doc.__setitem__("title", "Other"))
    assert load_yaml(Path("x.yaml"), after) == {"id": "demo", "title": "Other", "terms": ["a", "b"]}


def test_text_keeps_the_style_of_the_value_it_replaces() -> None:
    folded = FoldedScalarString("old text\n")
    assert isinstance(text_value("a new description " * 12, folded), FoldedScalarString)
    assert isinstance(text_value("line one\nline two", None), LiteralScalarString)
    assert text_value("  plain  ", None) == "plain"
    doc_text = "id: demo\ndescription: >\n  old text\n"
    after = edit_text(doc_text, lambda d: d.__setitem__("description", text_value("new " * 60, d["description"])))
    assert after.startswith("id: demo\ndescription: >\n") and all(len(line) <= WRAP_AT for line in after.splitlines())
    assert load_yaml(Path("x.yaml"), after)["description"].strip() == ("new " * 60).strip()


def test_long_flow_lists_wrap_under_the_first_item() -> None:
    line = "    terms: [" + ", ".join(f"term{i}" for i in range(40)) + ", 'a, quoted one', \"911\"]\n"
    wrapped = wrap_flow_lines(line)
    lines = wrapped.splitlines()
    assert len(lines) > 1 and all(len(x) <= WRAP_AT for x in lines)
    assert all(x.startswith(" " * len("    terms: [")) for x in lines[1:])
    terms = load_yaml(Path("x.yaml"), "a:\n  b:\n" + wrapped)["a"]["b"]["terms"]
    assert terms == [f"term{i}" for i in range(40)] + ["a, quoted one", "911"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
                .map(str.strip).filter(bool), min_size=1, max_size=8, unique_by=str.casefold))
def test_any_term_reads_back_as_itself(terms: list[str]) -> None:
    text = "id: demo\nlexicons:\n  words:\n    terms: [alpha, beta]\n"

    def put(doc: CommentedMap) -> None:
        seq = doc["lexicons"]["words"]["terms"]
        del seq[:]
        seq.extend(flow_scalar(t) for t in terms)

    try:
        after = edit_text(text, put)
    except YamlTextError:
        pytest.fail(f"terms could not be written: {terms!r}")
    assert load_yaml(Path("x.yaml"), after)["lexicons"]["words"]["terms"] == terms


def test_flow_scalars_are_quoted_when_a_reader_could_misread_them() -> None:
    assert flow_scalar("thinspo") == "thinspo" and type(flow_scalar("thinspo")) is str
    for risky in ("911", "yes", "No", "ok?", "a, b", "#tag", "@user", "[x]", "x: y", " padded"):
        assert type(flow_scalar(risky)) is not str, risky


# --- the form ---------------------------------------------------------------------------------------


def test_nest_turns_dotted_names_into_nested_entries() -> None:
    form = nest({"title": "T", "examples.0.turns.1.content": "hi", "examples.0.answers.q": "yes", "a.b": "1"})
    assert form == {"title": "T", "examples": {"0": {"turns": {"1": {"content": "hi"}}, "answers": {"q": "yes"}}},
                    "a": {"b": "1"}}


def test_lint_paths_map_back_to_form_fields_after_deletions() -> None:
    folder = builtin_rubrics_dir() / "eating_disorders"
    text = (folder / "rubric.yaml").read_text(encoding="utf-8")
    # Delete the second example: the draft's example 2 is the form's example 3.
    draft = apply_form(folder, text, {"examples.1.delete": "1", "examples.3.expected": "HARMFUL"})
    problem = draft.problems[0]
    assert problem.path == "examples.2.expected" and problem.field == "examples.3.expected"
    assert form_field("sub_questions.20.text", draft) is None  # a shared question: not in the form
    assert form_field("verdict.rules.1.when.any_yes.0", draft) == "verdict.rules.1.when"
    assert form_field("line 3, column 2", draft) is None


def test_a_new_word_list_needs_a_valid_unique_name() -> None:
    folder = builtin_rubrics_dir() / "eating_disorders"
    text = (folder / "rubric.yaml").read_text(encoding="utf-8")
    bad = apply_form(folder, text, {"lexicons.9.name": "Pro Ana", "lexicons.9.terms": "x"})
    assert bad.problems[0].field == "lexicons.9.name" and "lower case" in bad.problems[0].message
    clash = apply_form(folder, text, {"lexicons.9.name": "pro_ed", "lexicons.9.terms": "x"})
    assert "already named" in clash.problems[0].message
    good = apply_form(folder, text, {"lexicons.9.name": "body_checking", "lexicons.9.description": "Body-checking "
                                     "behaviours named in pro-ana spaces.", "lexicons.9.source": "Clinical review",
                                     "lexicons.9.terms": "body check\nwrist test\n"})
    assert good.ok, good.problems
    assert good.rubric is not None and good.rubric.spec.lexicons["body_checking"].terms == ["body check", "wrist test"]
