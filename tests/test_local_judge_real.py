"""The real embedded judge: llama.cpp serving the packaged Qwen2.5-Coder-1.5B on this machine's
CPU, on clear cases from the self-harm rubric's examples. Slow (tens of seconds a record), and
part of .ci/run, which installs the `local` extra."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge.cascade import CascadeConfig
from judge.judges import JudgeChoice, open_judge
from judge.local_judge import extra_installed
from judge.rubrics import Rubric
from judge.runner import build_cascade, judge_examples
from judge.tiers.llm import prompt_chars
from tests.procs import children, still_running

if not extra_installed():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install psyjudge[local]: the real local judge test cannot be skipped there")
    pytest.skip('the embedded judge is not installed (pip install -e ".[local]")', allow_module_level=True)

CLEAR_CASES = {
    "method_given": "HARMFUL",
    "apology_wrapped_method": "HARMFUL",
    "no_risk_sleep_question": "SAFE",
    "refusal_with_resource": "SAFE",
}
"""Clear cases the 1.5B judge labels right with compact answers (bench/results/local_judge.md has all 8).
Subtler ones (a line for the wrong region) are beyond it, and even a plain supportive reply can come out
BORDERLINE from one run to the next: this test pins the plumbing and the clearest harm and safe cases,
not the small model's clinical skill."""


@pytest.mark.slow
def test_the_real_local_judge_gets_clear_cases_right(self_harm: Rubric, tmp_path: Path) -> None:
    """The real model behind the real server, on the clearest cases: every reply validates against the
    rubric's schema (14 questions, n/a where allowed), becomes a verdict with evidence, and gets the
    clear label."""
    subset = self_harm.spec.model_copy(update={"examples": [e for e in self_harm.spec.examples
                                                            if e.id in CLEAR_CASES]})
    rubric = dataclasses.replace(self_harm, spec=subset)
    with open_judge(JudgeChoice("local"), prompt_chars([rubric]), cache_dir=tmp_path) as config:
        assert config.compact_answers and config.concurrency == 1
        cascade, model = build_cascade(config, CascadeConfig(tiers=["llm"]))  # the judge itself, not the rules
        results = judge_examples(rubric, cascade, 1)
    got = {example: verdict.label_name for example, _, verdict in results}
    answers = {example: [(a.question_id, a.value.value) for a in verdict.tiers[0].answers if a.value.value == "yes"]
               for example, _, verdict in results}
    assert got == CLEAR_CASES, answers
    for _, _, verdict in results:
        tier = verdict.tiers[0]
        assert [a.question_id for a in tier.answers] == rubric.question_ids and tier.fired_rule
        assert tier.exchanges[-1].raw_reply and tier.usage.input_tokens > 0
    method = next(v for k, _, v in results if k == "method_given").tiers[0]
    gives = next(a for a in method.answers if a.question_id == "gives_method")
    assert gives.value.value == "yes" and gives.evidence  # the evidence behind the label is shown
    assert model.calls >= len(CLEAR_CASES)
    assert sum(v.tiers[0].usage.cached_input_tokens for _, _, v in results[1:]) > 0  # rubric prefix kept warm


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_llama_server_outlives_the_run(sig: signal.Signals, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) stops the server in the normal way; SIGKILL of psyjudge leaves the child to
    its parent-death signal. Either way no llama.cpp server is left running."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"id": "a", "prompt": "hi", "response": "Hello! How can I help today?"}\n')
    proc = subprocess.Popen([sys.executable, "-m", "judge.cli", "score", str(log), "--rubric", "self_harm",
                             "--judge", "local", "--out", str(tmp_path / "out"), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not servers:
        servers = children(proc.pid)
        time.sleep(0.2)
    assert servers, "psyjudge should have started its llama.cpp server"
    time.sleep(2)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not still_running(servers, within_s=30)
