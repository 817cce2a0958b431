"""The cascade's modes (cascade, all, one tier alone), its per-verdict ledger and the run's summed
ledger, the degraded fallback when the judge fails, and --strict."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from judge.cascade import Cascade, CascadeConfig
from judge.cli import app
from judge.ledger import summarise_ledgers
from judge.models import JudgeConfig
from judge.rubrics import Rubric
from judge.runner import build_cascade, run_score
from judge.schema import ERROR, Label, Record, TierResult, Usage
from tests.conftest import DEMO_LOG

runner = CliRunner()

Script = Mapping[str, tuple[Label | None, float | None]]


class Scripted:
    """A tier that answers from a script keyed by the response text, at a fixed price per call."""

    def __init__(self, name: str, script: Script, *, cost: float = 0.0, tokens: int = 0,
                 fail: bool = False, fallback: Label | None = None) -> None:
        self.name, self.script, self.cost, self.tokens = name, script, cost, tokens
        self.fail, self.fallback = fail, fallback
        self.seen: list[str] = []

    async def __call__(self, record: Record, rubric: Rubric) -> TierResult:
        self.seen.append(record.id)
        await asyncio.sleep(0)
        usage = Usage(calls=1 if self.tokens else 0, input_tokens=self.tokens, output_tokens=self.tokens // 10,
                      cost_usd=self.cost, seconds=0.001)
        if self.fail:
            return TierResult(tier=self.name, error="provider down", usage=usage)
        label, confidence = self.script.get(record.response, (None, None))
        return TierResult(tier=self.name, label=label, confidence=confidence, usage=usage,
                          fallback_label=self.fallback, applicable=True)


def record(text: str, rid: str | None = None) -> Record:
    return Record(id=rid or text, response=text)


RULES: Script = {"method": (Label.HARMFUL, 0.95), "weak": (Label.HARMFUL, 0.5)}
CLASSIFIER: Script = {"fine": (Label.SAFE, 0.99), "weak": (Label.SAFE, 0.7), "unsure": (Label.SAFE, 0.6)}
LLM: Script = {"method": (Label.HARMFUL, 1.0), "fine": (Label.SAFE, 1.0), "weak": (Label.BORDERLINE, 1.0),
               "unsure": (Label.SAFE, 1.0)}


def tiers(llm_fails: bool = False) -> list[Scripted]:
    return [Scripted("rules", RULES, fallback=Label.BORDERLINE), Scripted("classifier", CLASSIFIER),
            Scripted("llm", LLM, cost=0.002, tokens=1000, fail=llm_fails)]


THRESHOLDS = {"rules": 0.9, "classifier": 0.95}


def judge(cascade: Cascade, text: str, self_harm: Rubric):  # type: ignore[no-untyped-def]
    return asyncio.run(cascade.judge(record(text), self_harm))


def test_cascade_stops_at_the_first_sure_tier_and_the_ledger_says_so(self_harm: Rubric) -> None:
    cascade = Cascade(tiers(), THRESHOLDS)
    v = judge(cascade, "method", self_harm)
    assert (v.label, v.decided_by, v.mode) == (Label.HARMFUL, "rules", "cascade")
    assert [(e.tier, e.outcome) for e in v.ledger] == [("rules", "decided"), ("classifier", "skipped"),
                                                        ("llm", "skipped")]
    assert v.ledger[0].stops and not v.ledger[1].stops
    v = judge(cascade, "fine", self_harm)
    assert (v.label, v.decided_by) == (Label.SAFE, "classifier")
    assert [e.outcome for e in v.ledger] == ["abstained", "decided", "skipped"]
    v = judge(cascade, "weak", self_harm)  # neither cheap tier is sure: the LLM decides and is paid for
    assert (v.label, v.decided_by) == (Label.BORDERLINE, "llm")
    assert [e.outcome for e in v.ledger] == ["abstained", "abstained", "decided"]
    assert v.ledger[2].cost_usd == pytest.approx(0.002) and v.ledger[2].input_tokens == 1000
    assert v.usage.cost_usd == pytest.approx(sum(e.cost_usd for e in v.ledger))
    assert all(e.seconds >= 0 for e in v.ledger)


def test_mode_all_runs_every_tier_keeps_the_llm_label_and_marks_where_the_cascade_would_stop(
        self_harm: Rubric) -> None:
    scripted = tiers()
    cascade = Cascade(scripted, THRESHOLDS, mode="all")
    v = judge(cascade, "fine", self_harm)
    assert all(t.seen == ["fine"] for t in scripted)  # every tier ran
    assert (v.label, v.decided_by, v.mode) == (Label.SAFE, "llm", "all")
    assert [(e.outcome, e.stops) for e in v.ledger] == [("abstained", False), ("compared", True), ("decided", True)]
    # The cascade's own answer is the first tier that would stop it: the classifier.
    assert next(e.tier for e in v.ledger if e.stops) == "classifier"
    v = judge(cascade, "weak", self_harm)
    # The LLM's label is the reference even where a cheaper tier is (wrongly) sure of another.
    assert (v.label, v.decided_by) == (Label.BORDERLINE, "llm")


def test_mode_all_when_the_llm_fails_keeps_the_answer_the_cascade_would_have_given(self_harm: Rubric) -> None:
    v = judge(Cascade(tiers(llm_fails=True), THRESHOLDS, mode="all"), "method", self_harm)
    assert (v.label, v.decided_by, v.degraded) == (Label.HARMFUL, "rules", False)
    assert [e.outcome for e in v.ledger] == ["decided", "compared", "error"]


def test_a_single_tier_decides_whatever_its_confidence(self_harm: Rubric) -> None:
    only = Cascade([Scripted("classifier", CLASSIFIER)], {"classifier": 0.95}, mode="single")
    v = judge(only, "unsure", self_harm)
    assert (v.label, v.decided_by, v.mode) == (Label.SAFE, "classifier", "single")
    with pytest.raises(ValueError, match="one tier"):
        Cascade(tiers(), mode="single")


def test_a_failed_llm_falls_back_degraded_and_strict_makes_it_error(self_harm: Rubric) -> None:
    v = judge(Cascade(tiers(llm_fails=True), THRESHOLDS), "weak", self_harm)
    assert (v.label, v.decided_by, v.degraded) == (Label.BORDERLINE, "rules", True)
    assert "llm: provider down" in (v.error or "")
    assert [e.outcome for e in v.ledger] == ["abstained", "abstained", "error"]
    strict = judge(Cascade(tiers(llm_fails=True), THRESHOLDS, strict=True), "weak", self_harm)
    assert (strict.label, strict.degraded, strict.decided_by) == (ERROR, False, None)
    assert "strict" in (strict.error or "")
    # Strict does not touch a record a cheaper tier was sure of: nothing failed on the way.
    sure = judge(Cascade(tiers(llm_fails=True), THRESHOLDS, strict=True), "method", self_harm)
    assert (sure.label, sure.degraded) == (Label.HARMFUL, False)


def test_config_modes_are_validated() -> None:
    assert CascadeConfig(tiers=["llm"], mode="llm").run_mode == "single"
    assert CascadeConfig(tiers=["rules", "llm"], mode="all").run_mode == "all"
    with pytest.raises(ValueError, match="runs the llm tier alone"):
        CascadeConfig(tiers=["rules", "llm"], mode="llm")
    with pytest.raises(ValueError):
        CascadeConfig(mode="everything")  # type: ignore[arg-type]


def test_the_run_summary_is_the_sum_of_the_ledgers(tmp_path: Path, self_harm: Rubric) -> None:
    texts = ["method", "fine", "weak", "unsure", "method", "fine", "fine", "weak"]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"id": f"r{i}", "response": t}) + "\n" for i, t in enumerate(texts)))
    cascade = Cascade(tiers(), THRESHOLDS)
    outcome = run_score(log, [self_harm], tmp_path / "out", JudgeConfig(model="none"), cascade=cascade,
                        progress=False)
    ledger = outcome.summary["ledger"]
    # By hand: rules decides the 2 "method"; the classifier the 3 "fine"; the LLM "weak" x2 and "unsure".
    shares = {t["tier"]: (t["decided"], t["decided_share"], t["ran"]) for t in ledger["by_tier"]}
    assert shares == {"rules": (2, 2 / 8, 8), "classifier": (3, 3 / 8, 6), "llm": (3, 3 / 8, 3)}
    assert (ledger["llm_verdicts"], ledger["llm_calls_avoided"], ledger["llm_share"]) == (3, 5, 3 / 8)
    assert ledger["records"] == 8 and ledger["verdicts"] == 8
    per = ledger["per_1k_records"]
    assert per["cost_usd"] == pytest.approx(3 * 0.002 / 8 * 1000)  # $0.75 per 1,000 records
    assert per["input_tokens"] == pytest.approx(3 * 1000 / 8 * 1000)
    only = ledger["llm_only_per_1k_records"]
    assert only["cost_usd"] == pytest.approx(0.002 * 1000)  # every record at the LLM's price: $2 per 1,000
    assert ledger["cost_saving_share"] == pytest.approx(1 - 0.75 / 2.0)
    assert "estimated from the mean spend of the 3 verdicts" in ledger["llm_only_basis"]
    # The same sums straight from results.jsonl, line by line.
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sum(e["cost_usd"] for r in rows for e in r["ledger"]) == pytest.approx(outcome.summary["cost_usd"])
    assert sum(e["outcome"] == "skipped" and e["tier"] == "llm" for r in rows for e in r["ledger"]) == 5


def test_in_mode_all_llm_only_cost_is_measured_not_estimated(tmp_path: Path, self_harm: Rubric) -> None:
    texts = ["method", "fine", "weak"]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"id": f"r{i}", "response": t}) + "\n" for i, t in enumerate(texts)))
    outcome = run_score(log, [self_harm], tmp_path / "out", JudgeConfig(model="none"),
                        cascade=Cascade(tiers(), THRESHOLDS, mode="all"), progress=False)
    ledger = outcome.summary["ledger"]
    assert ledger["mode"] == "all" and ledger["llm_calls_avoided"] == 0
    assert ledger["llm_only_basis"].startswith("measured")
    assert ledger["per_1k_records"]["cost_usd"] == pytest.approx(ledger["llm_only_per_1k_records"]["cost_usd"])


def test_ledgers_of_several_rubrics_count_records_once() -> None:
    from judge.ledger import TierSpend

    llm = TierSpend("llm", "decided", 1, 100, 10, 0.01, True, 1.0)
    skipped = TierSpend("llm", "skipped", 0, 0, 0, 0.0, True, 0.0)
    rules = TierSpend("rules", "abstained", 0, 0, 0, 0.0, True, 0.001)
    summary = summarise_ledgers([("a", (rules, llm)), ("a", (rules, skipped)), ("b", (rules, skipped))],
                                mode="cascade", tiers=["rules", "llm"])
    assert (summary.records, summary.verdicts, summary.llm_records, summary.llm_record_share) == (2, 3, 1, 0.5)
    assert summary.per_1k_records is not None and summary.per_1k_records.cost_usd == pytest.approx(0.01 / 2 * 1000)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("strict", [False, True])
def test_judge_server_down_gives_degraded_verdicts_or_errors_with_strict(tmp_path: Path, strict: bool) -> None:
    port = _closed_port()
    args = ["score", str(DEMO_LOG), "-r", "self_harm", "--out", str(tmp_path / "out"), "--judge", "openai/fake",
            "--api-base", f"http://127.0.0.1:{port}/v1", "--max-attempts", "1", "--timeout", "5", "--no-progress",
            "--tiers", "rules,llm", "--no-show", *(["--strict"] if strict else [])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    by_rules = [r for r in rows if r["decided_by"] == "rules" and not r["degraded"]]
    failed = [r for r in rows if r not in by_rules]
    assert len(by_rules) == 2 and len(failed) == 6  # the rules tier's two sure HARMFUL findings stand
    for row in failed:
        assert "llm:" in row["error"] and "Connection" in row["error"]
        assert [e["outcome"] for e in row["ledger"]] == ["abstained", "error"]
        if strict:
            assert (row["label"], row["degraded"]) == ("ERROR", False)
        else:
            assert row["degraded"] and row["label"] in ("SAFE", "BORDERLINE", "HARMFUL")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["degraded"] == (0 if strict else 6) and summary["errors"] == (6 if strict else 0)
    assert summary["cascade"]["strict"] is strict


def test_build_cascade_carries_mode_and_strict() -> None:
    cascade, _ = build_cascade(JudgeConfig(model="none"), CascadeConfig(tiers=["rules"], mode="rules", strict=True))
    assert (cascade.mode, cascade.strict, [t.name for t in cascade.tiers]) == ("single", True, ["rules"])
