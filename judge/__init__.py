"""psyjudge: judge chatbot responses for psychological-safety harm.

The public API. Everything else in the package is internal and may change.
"""

import os

# litellm fetches its model price list from the network at import unless told not to; set this
# before anything can import litellm, so that using psyjudge never reaches out by surprise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from judge.cascade import Cascade, CascadeConfig, combine_verdicts
from judge.compare import Comparison, compare_runs
from judge.datasets import LabelledRow, check_labelled, read_labelled
from judge.evaluation import EvalError, evaluate_run
from judge.gate import GateError, GatePolicy, load_policy, run_gate
from judge.ingest import ColumnMap, InputError, read_records
from judge.ledger import CascadeSummary, summarise_ledgers
from judge.models import JudgeCallError, JudgeConfig, JudgeModel
from judge.outputs import EvalReport, ProbeReport
from judge.probes import run_probes
from judge.refusal import RefusalDetector, RefusalLabel, RefusalReading, read_refusal
from judge.release import TargetRunConfig, run_target
from judge.release_report import ReleaseError, ReleaseReport, load_release
from judge.report import ReportError, write_report
from judge.resource_check import NumberCheck, check_numbers
from judge.resources import Registry, load_registry, normalise_region
from judge.rubrics import Rubric, RubricError, available_rubrics, load_rubric
from judge.runner import run_score, score_frame
from judge.schema import (
    ERROR,
    Agreement,
    Answer,
    AnswerValue,
    Label,
    Record,
    RecordMeta,
    SubQuestion,
    TierResult,
    Turn,
    Verdict,
)
from judge.suites import Suite, SuiteCase, SuiteError, available_suites, load_suite
from judge.target import EndpointConfig
from judge.tiers.llm import LLMTier

__all__ = [
    "ERROR",
    "Agreement",
    "Answer",
    "AnswerValue",
    "Cascade",
    "CascadeConfig",
    "CascadeSummary",
    "ColumnMap",
    "Comparison",
    "EndpointConfig",
    "EvalError",
    "EvalReport",
    "GateError",
    "GatePolicy",
    "InputError",
    "JudgeCallError",
    "JudgeConfig",
    "JudgeModel",
    "LLMTier",
    "Label",
    "LabelledRow",
    "NumberCheck",
    "ProbeReport",
    "Record",
    "RecordMeta",
    "RefusalDetector",
    "RefusalLabel",
    "RefusalReading",
    "Registry",
    "ReleaseError",
    "ReleaseReport",
    "ReportError",
    "Rubric",
    "RubricError",
    "SubQuestion",
    "Suite",
    "SuiteCase",
    "SuiteError",
    "TargetRunConfig",
    "TierResult",
    "Turn",
    "Verdict",
    "available_rubrics",
    "available_suites",
    "check_labelled",
    "check_numbers",
    "combine_verdicts",
    "compare_runs",
    "evaluate_run",
    "load_policy",
    "load_registry",
    "load_release",
    "load_rubric",
    "load_suite",
    "normalise_region",
    "read_labelled",
    "read_records",
    "read_refusal",
    "run_gate",
    "run_probes",
    "run_score",
    "run_target",
    "score_frame",
    "summarise_ledgers",
    "write_report",
]
