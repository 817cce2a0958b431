"""`psyjudge purge`: a run folder loses every piece of conversation text and keeps its labels and
metrics; eval, gate, compare and report still work on it; purging twice is harmless."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from judge.cli import app
from judge.cli_purge import register
from judge.outputs import EVAL_FILE, EvalReport
from judge.purge import PURGED_FILE, is_purged, purge_run
from judge.release_report import RELEASE_FILE
from tests.fakes.openai_server import FakeOpenAIServer
from tests.test_cli_eval import ROWS, judge_args, labelled_csv
from tests.test_target_run import DEFAULT_ANSWER, HARMFUL, REFUSAL, SIM_LINES, SUPPORT, fakes, run_args, write_suite  # noqa: F401  (fakes is a fixture)

runner = CliRunner()
if not any(getattr(c, "name", None) == "purge" for c in app.registered_commands):
    register(app)  # until the main app registers the command itself

POLICY = {"max_harmful_rate": 0.9, "min_recall": {"gold_column": "gold_label", "min": 0.1}, "max_error_rate": 0.5}


def holding(root: Path, texts: list[str]) -> list[str]:
    """Files under root that hold any of the texts (as written, or JSON-escaped)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("utf-8", errors="replace")
            for text in texts:
                if text in data or json.dumps(text)[1:-1] in data:
                    hits.append(f"{path.name}: {text[:40]}")
    return hits


def test_a_scored_run_loses_its_text_and_keeps_its_figures(server: FakeOpenAIServer, tmp_path: Path) -> None:
    data, out = labelled_csv(tmp_path / "labelled.csv"), tmp_path / "run"
    scored = runner.invoke(app, ["eval", str(data), "--gold", "gold_label", "-r", "self_harm", "--out", str(out),
                                 "--bootstrap", "50", *judge_args(server, tmp_path)])
    assert scored.exit_code == 0, scored.output
    texts = [t for row in ROWS for t in (row[1], row[2]) if len(t) > 8]
    assert holding(out, texts), "the run should quote the conversations before the purge"
    before = EvalReport.model_validate_json((out / EVAL_FILE).read_text())
    policy = tmp_path / "gate.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    gate_before = runner.invoke(app, ["gate", str(out), "--policy", str(policy)])
    labels_before = {json.loads(line)["record_id"]: json.loads(line)["label"]
                     for line in (out / "results.jsonl").read_text().splitlines()}

    purged = runner.invoke(app, ["purge", str(out)])
    assert purged.exit_code == 0, purged.output
    assert "results.jsonl:" in purged.output and "report.html: deleted" in purged.output
    assert "caches" in purged.output
    assert is_purged(out) and json.loads((out / PURGED_FILE).read_text())["purged"] is True
    assert holding(out, texts) == []

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["record_id"]: r["label"] for r in rows} == labels_before
    assert all(r["response"] == "" and r["record_sha256"] for r in rows)
    answered = [a for r in rows for t in r["tiers"] for a in t["answers"]]
    assert answered and all(a["value"] in ("yes", "no", "n/a") and a["evidence"] == "" for a in answered)
    assert all(x["messages"] == [] and x["raw_reply"] is None for r in rows for t in r["tiers"]
               for x in t["exchanges"])
    assert any(r["ledger"] for r in rows)

    # eval on the run folder gives the same figures; the gate measures the same; the report rebuilds.
    again = runner.invoke(app, ["eval", str(out), "--gold", "gold_label", "--no-report", "--bootstrap", "50"])
    assert again.exit_code == 0, again.output
    after = EvalReport.model_validate_json((out / EVAL_FILE).read_text())
    assert after.confusion == before.confusion and after.accuracy == before.accuracy
    gate_after = runner.invoke(app, ["gate", str(out), "--policy", str(policy)])
    assert (gate_after.exit_code, gate_after.output) == (gate_before.exit_code, gate_before.output)
    page = runner.invoke(app, ["report", str(out)])
    assert page.exit_code == 0, page.output
    assert holding(out, texts) == []

    # Idempotent: the second pass removes nothing but the rebuilt report, which quotes nothing.
    (out / "report.html").unlink()
    second = purge_run(out)
    assert not second.removed_anything
    assert len(json.loads((out / PURGED_FILE).read_text())["purges"]) == 2


def test_a_target_run_loses_its_transcripts_and_still_compares_and_gates(fakes: Any, tmp_path: Path) -> None:  # noqa: F811
    t, j, s, _, _ = fakes
    suite, cache = write_suite(tmp_path / "suites"), tmp_path / "cache"
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        assert runner.invoke(app, run_args(suite, runs / name, t, j, s, cache)).exit_code == 0
    compare_before = runner.invoke(app, ["compare", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "c1")])
    assert compare_before.exit_code == 0, compare_before.output
    release_before = json.loads((runs / "a" / RELEASE_FILE).read_text())
    texts = [HARMFUL, REFUSAL, SUPPORT, DEFAULT_ANSWER, *SIM_LINES, "How can I support a friend"]
    assert holding(runs / "a", texts)
    assert any(o["refusal_evidence"] for o in release_before["outcomes"])

    for name in ("a", "b"):
        result = runner.invoke(app, ["purge", str(runs / name)])
        assert result.exit_code == 0, result.output
        assert "transcripts.jsonl: deleted" in result.output and "responses.jsonl: deleted" in result.output
        assert holding(runs / name, texts) == []
    release_after = json.loads((runs / "a" / RELEASE_FILE).read_text())
    strip = [{k: v for k, v in o.items() if k != "refusal_evidence"} for o in release_before["outcomes"]]
    assert [{k: v for k, v in o.items() if k != "refusal_evidence"} for o in release_after["outcomes"]] == strip
    assert release_after["overall"] == release_before["overall"]

    compare_after = runner.invoke(app, ["compare", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "c2")])
    assert compare_after.exit_code == 0, compare_after.output
    assert compare_after.output.replace("c2", "c1") == compare_before.output
    policy = tmp_path / "gate.yaml"
    policy.write_text(yaml.safe_dump({"max_harmful_rate": 0.9}))
    gated = runner.invoke(app, ["gate", str(runs / "a"), "--policy", str(policy)])
    assert gated.exit_code in (0, 1) and "max_harmful_rate" in gated.output, gated.output


def test_a_folder_that_is_no_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["purge", str(tmp_path)])
    assert result.exit_code == 2 and "not a psyjudge run folder" in result.output
    assert runner.invoke(app, ["purge", str(tmp_path / "missing")]).exit_code == 2
