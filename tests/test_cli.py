"""The command line: documented exit codes, clear errors for unknown values, rubric commands, and
the end-to-end score of the demo log against the loopback server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from judge.cli import app
from tests.conftest import DEMO_LOG, REPO
from tests.fakes.openai_server import FakeOpenAIServer

runner = CliRunner()


def score_args(server: FakeOpenAIServer, out: Path, *extra: str) -> list[str]:
    """The judge path: rules then the (scripted) judge (the default, stated so that the labels stay the
    script's whatever the default becomes). The classifier between them is exercised below and in
    test_classifier.py."""
    return ["score", str(DEMO_LOG), "--rubric", "self_harm", "--out", str(out), "--judge", "openai/fake-judge",
            "--api-base", server.base_url, "--no-progress", "--tiers", "rules,llm", *extra]


def test_score_demo_log_end_to_end(server: FakeOpenAIServer, tmp_path: Path) -> None:
    result = runner.invoke(app, score_args(server, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "8 verdicts (BORDERLINE 2, HARMFUL 3, SAFE 3); 2 row(s) quarantined" in result.output
    assert f"results:    {tmp_path / 'out' / 'results.jsonl'}" in result.output
    assert "s per record" in result.output
    rerun = runner.invoke(app, score_args(server, tmp_path / "out"))
    # The rules tier decides the two records with a high-precision harm finding: the judge is asked 6 times.
    assert "decided by: llm 6, rules 2" in result.output
    assert "0 scored now, 8 already done" in rerun.output and server.calls == 6


@pytest.mark.parametrize(("args", "code", "message"), [
    (["score", str(DEMO_LOG), "--rubric", "nope", "--judge", "openai/x"], 2, "unknown rubric"),
    (["score", "missing.jsonl", "--rubric", "self_harm", "--judge", "openai/x"], 3, "no such file"),
    (["score", str(DEMO_LOG), "--rubric", "self_harm", "--judge", "openai/x", "--format", "xml"], 2,
     "--format: expected jsonl, csv or parquet"),
    (["score", str(DEMO_LOG), "--rubric", "self_harm", "--judge", "openai/x", "--column", "answer=resp"], 2,
     "--column"),
    (["score", str(DEMO_LOG), "--rubric", "self_harm", "--judge", "openai/x", "--concurrency", "0"], 2, ""),
    (["score", str(DEMO_LOG), "--rubric", "self_harm", "--judge", "openai/x", "--bogus"], 2, "No such option"),
    (["rubric", "show", "nope"], 2, "unknown rubric"),
])
def test_exit_codes_and_clear_errors(args: list[str], code: int, message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "score" else [])])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_no_judge_and_no_local_extra_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("judge.judges.extra_installed", lambda: False)
    for args in ([], ["--judge", "local"]):
        result = runner.invoke(app, ["score", str(DEMO_LOG), "--rubric", "self_harm", "--out", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert 'pip install "psyjudge[local]"' in result.output and "--judge MODEL" in result.output


def test_a_provider_key_without_a_judge_asks_for_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    result = runner.invoke(app, ["score", str(DEMO_LOG), "--rubric", "self_harm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "ANTHROPIC_API_KEY is set but no --judge was given" in result.output


def test_judge_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from judge.judges import choose_judge

    monkeypatch.setattr("judge.judges.extra_installed", lambda: True)
    assert choose_judge(None).kind == "local" and choose_judge("local").kind == "local"
    assert choose_judge("openai/gpt-4o-mini").model == "openai/gpt-4o-mini"
    assert choose_judge("~/models/x.GGUF").kind == "gguf"
    assert "embedded qwen2.5-coder-1.5b-instruct-q4_k_m" in choose_judge("local").description


def test_unreadable_input_kind(tmp_path: Path) -> None:
    bad = tmp_path / "log.parquet"
    bad.write_bytes(b"not parquet at all")
    result = runner.invoke(app, ["score", str(bad), "--rubric", "self_harm", "--judge", "openai/x",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "cannot read Parquet" in result.output


def test_rubric_list_show_render_lint_test() -> None:
    listed = runner.invoke(app, ["rubric", "list"])
    assert listed.exit_code == 0 and "self_harm@2.0.0" in listed.output
    shown = runner.invoke(app, ["rubric", "show", "self_harm"])
    assert shown.exit_code == 0 and "gives_method" in shown.output and "HARMFUL" in shown.output
    rendered = runner.invoke(app, ["rubric", "render", "self_harm", "--example", "method_given"])
    assert rendered.exit_code == 0 and "===== system =====" in rendered.output
    assert "whole bottle at once" in rendered.output and "<<<RESPONSE-" in rendered.output
    assert runner.invoke(app, ["rubric", "render", "self_harm", "--example", "zzz"]).exit_code == 2
    assert runner.invoke(app, ["rubric", "lint", "self_harm"]).exit_code == 0
    tested = runner.invoke(app, ["rubric", "test", "self_harm"])
    assert tested.exit_code == 0 and tested.output.count("ok  ") == 8


def test_rubric_lint_and_test_fail_on_a_broken_rubric(tmp_path: Path) -> None:
    folder = tmp_path / "self_harm"
    folder.mkdir()
    text = (REPO / "rubrics" / "self_harm" / "rubric.yaml").read_text()
    (folder / "rubric.yaml").write_text(text.replace("expected: HARMFUL", "expected: SAFE", 1))
    lint = runner.invoke(app, ["rubric", "lint", str(folder)])
    assert lint.exit_code == 2 and "1 example(s) disagree" in lint.output
    test = runner.invoke(app, ["rubric", "test", str(folder)])
    assert test.exit_code == 1 and "FAIL method_given" in test.output


def test_rubric_test_with_a_judge(server: FakeOpenAIServer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["rubric", "test", "self_harm", "--judge", "openai/fake-judge",
                                 "--api-base", server.base_url, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "judge openai/fake-judge" in result.output and result.output.count("ok  ") == 16


def test_rubric_test_checks_a_labelled_dataset_and_names_the_rows_that_disagree(tmp_path: Path) -> None:
    data = REPO / "datasets" / "self_harm" / "examples.jsonl"
    good = runner.invoke(app, ["rubric", "test", "self_harm", "--dataset", str(data)])
    assert good.exit_code == 0 and "0 disagree with the verdict rule" in good.output
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    harmful = next(r for r in rows if r["gold_label"] == "HARMFUL")
    harmful["gold_label"] = "SAFE"  # a labelling mistake
    edited = tmp_path / "examples.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = runner.invoke(app, ["rubric", "test", "self_harm", "--dataset", str(edited)])
    assert bad.exit_code == 1 and "1 disagree with the verdict rule" in bad.output
    assert f"FAIL {harmful['id']}" in bad.output and "but gold_label is SAFE" in bad.output
    wrong = runner.invoke(app, ["rubric", "test", "eating_disorders", "--dataset", str(data)])
    assert wrong.exit_code == 1 and "labelled for 'self_harm', not 'eating_disorders'" in wrong.output
    edited.write_text('{"id": "x"}\n')
    broken = runner.invoke(app, ["rubric", "test", "self_harm", "--dataset", str(edited)])
    assert broken.exit_code == 2 and "examples.jsonl:1:" in broken.output


def test_rubric_test_judges_a_balanced_sample_of_a_dataset(server: FakeOpenAIServer, tmp_path: Path) -> None:
    data = REPO / "datasets" / "self_harm" / "examples.jsonl"
    result = runner.invoke(app, ["rubric", "test", "self_harm", "--dataset", str(data), "--sample", "6",
                                 "--judge", "openai/fake-judge", "--api-base", server.base_url,
                                 "--cache-dir", str(tmp_path)])
    agreed = int(result.output.split("judge agrees with the gold label on ")[1].split("/6 rows")[0])
    assert result.exit_code == (0 if agreed == 6 else 1), result.output
    assert server.calls == 8 + 6  # the rubric's examples, then the sample
    # Each disagreement names the sub-questions the judge answered differently from the clinicians.
    assert result.output.count("answers differ on:") == 6 - agreed


def test_score_under_several_rubrics_reports_record_labels(server: FakeOpenAIServer, tmp_path: Path) -> None:
    result = runner.invoke(app, score_args(server, tmp_path / "out", "--rubric", "eating_disorders", "--no-show"))
    assert result.exit_code == 0, result.output
    assert "16 verdicts" in result.output
    assert "8 records across 2 rubrics, most severe applicable label: BORDERLINE 2, HARMFUL 3, SAFE 3" in result.output
    assert f"records:    {tmp_path / 'out' / 'record_verdicts.jsonl'}" in result.output


def test_resources_commands_are_mounted() -> None:
    listed = runner.invoke(app, ["resources", "list", "--region", "GB"])
    assert listed.exit_code == 0 and "116 123" in listed.output
    checked = runner.invoke(app, ["resources", "check", "Call or text 988 now.", "--region", "GB"])
    assert checked.exit_code == 1 and "wrong_region" in checked.output


def test_importing_the_package_makes_no_network_call_and_does_not_load_litellm() -> None:
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise SystemExit('network call at import: %r' % (a,))\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import sys, os\n"
        "import judge, judge.cli, judge.models\n"
        "assert 'litellm' not in sys.modules, 'litellm must be imported lazily'\n"
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'\n"
        "judge.models.load_litellm()\n"  # and importing litellm through the adapter stays offline too
        "print('offline ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "offline ok" in result.stdout


def test_console_script_is_installed() -> None:
    result = subprocess.run(["psyjudge", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "score" in result.stdout and "rubric" in result.stdout


def test_summary_records_the_judge(server: FakeOpenAIServer, tmp_path: Path) -> None:
    runner.invoke(app, score_args(server, tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["judge"] == "openai/fake-judge" and summary["rubrics"][0]["id"] == "self_harm"


def test_score_runs_the_classifier_between_rules_and_judge(server: FakeOpenAIServer, tmp_path: Path) -> None:
    from judge.classifier.model import DEFAULT_MODEL_DIR

    out = tmp_path / "out"
    # Naming a classifier model puts the tier in the cascade.
    args = ["score", str(DEMO_LOG), "--rubric", "self_harm", "--out", str(out), "--judge", "openai/fake-judge",
            "--api-base", server.base_url, "--no-progress", "--no-show", "--no-cache",
            "--classifier-model", str(DEFAULT_MODEL_DIR)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tiers: rules, classifier, llm" in result.output
    summary = json.loads((out / "summary.json").read_text())
    decided = summary["by_deciding_tier"]
    # The shipped head decides the clear cases, so the judge is asked about fewer records than were scored.
    assert decided.get("classifier", 0) >= 1 and sum(decided.values()) == 8
    assert len(server.requests) == decided.get("llm", 0) < 8
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_classifier = [r for r in rows if r["decided_by"] == "classifier"]
    tier = next(t for t in by_classifier[0]["tiers"] if t["tier"] == "classifier")
    assert tier["usage"]["input_tokens"] == 0 and tier["usage"]["seconds"] > 0 and "threshold" in tier["fired_rule"]


def test_score_refuses_a_classifier_folder_that_is_not_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", str(DEMO_LOG), "-r", "self_harm", "--tiers", "rules,classifier",
                                 "--classifier-model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a psyjudge classifier" in result.output
    assert not (tmp_path / "out" / "results.jsonl").exists()
    ignored = runner.invoke(app, ["score", str(DEMO_LOG), "-r", "self_harm", "--tiers", "rules",
                                  "--classifier-model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert ignored.exit_code == 2 and "leaves the classifier out" in ignored.output
