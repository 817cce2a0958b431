"""`psyjudge classifier ...` end to end: train a head from a labelled file, evaluate it on another,
print its card; bad usage exits 2 with the option named."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from judge.cli import app
from tests.conftest import REPO

runner = CliRunner()
DATA = REPO / "datasets"


def test_train_evaluate_and_info(tmp_path: Path) -> None:
    out = tmp_path / "model"
    trained = runner.invoke(app, ["classifier", "train", "--data", str(DATA / "self_harm" / "examples.jsonl"),
                                  "--data", str(DATA / "substance_misuse" / "examples.jsonl"), "--out", str(out),
                                  "--max-length", "64", "--target", "HARMFUL=0.9", "--name", "cli-test"])
    assert trained.exit_code == 0, trained.output
    assert f"wrote {out}" in trained.output and "held-out validation" in trained.output
    manifest = json.loads((out / "psyjudge-classifier.json").read_text())
    assert manifest["thresholds"]["targets"] == {"HARMFUL": 0.9}  # SAFE left out: never decided
    assert manifest["thresholds"]["threshold"]["SAFE"] is None
    assert manifest["rubrics"] == ["self_harm", "substance_misuse"] and manifest["card"]["name"] == "cli-test"

    report_file = tmp_path / "report.json"
    evaluated = runner.invoke(app, ["classifier", "evaluate", str(DATA / "eating_disorders" / "examples.jsonl"),
                                    "--model", str(out), "--json", str(report_file)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_file.read_text())
    assert report["rows"] == 116 and set(report["per_label"]) == {"SAFE", "BORDERLINE", "HARMFUL"}
    assert report["at_thresholds"]["labels"]["SAFE"]["decided"] == 0
    assert sum(row["count"] for row in report["reliability"]) == 116
    assert "reliability (ECE" in evaluated.output and "at the thresholds: coverage" in evaluated.output

    info = runner.invoke(app, ["classifier", "info", "--model", str(out)])
    assert info.exit_code == 0 and "# Model card: cli-test" in info.output and "## Held-out validation" in info.output


def test_bad_usage_exits_2_naming_the_problem(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("response,label\nfine,ok\nbad,nope\n")
    unmapped = runner.invoke(app, ["classifier", "train", "--data", str(table), "--out", str(tmp_path / "m")])
    assert unmapped.exit_code == 2 and "--label-map" in unmapped.output
    method = runner.invoke(app, ["classifier", "train", "--data", str(table), "--out", str(tmp_path / "m"),
                                 "--method", "boosting"])
    assert method.exit_code == 2 and "--method" in method.output
    nothing = runner.invoke(app, ["classifier", "train", "--out", str(tmp_path / "m")])
    assert nothing.exit_code == 2 and "--data" in nothing.output
    missing = runner.invoke(app, ["classifier", "info", "--model", str(tmp_path)])
    assert missing.exit_code == 2 and "not a psyjudge classifier" in missing.output
    target = runner.invoke(app, ["classifier", "train", "--data", str(table), "--out", str(tmp_path / "m"),
                                 "--target", "HARMFUL=1.5"])
    assert target.exit_code == 2 and "--target" in target.output
