"""psyjudge: judge chatbot responses for psychological-safety harm.

The public API. Everything else in the package is internal and may change.
"""

import os

# litellm fetches its model price list from the network at import unless told not to; set this
# before anything can import litellm, so that using psyjudge never reaches out by surprise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from judge.cascade import Cascade
from judge.ingest import ColumnMap, InputError, read_records
from judge.models import JudgeCallError, JudgeConfig, JudgeModel
from judge.rubrics import Rubric, RubricError, available_rubrics, load_rubric
from judge.runner import run_score, score_frame
from judge.schema import (
    ERROR,
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
from judge.tiers.llm import LLMTier

__all__ = [
    "ERROR",
    "Answer",
    "AnswerValue",
    "Cascade",
    "ColumnMap",
    "InputError",
    "JudgeCallError",
    "JudgeConfig",
    "JudgeModel",
    "LLMTier",
    "Label",
    "Record",
    "RecordMeta",
    "Rubric",
    "RubricError",
    "SubQuestion",
    "TierResult",
    "Turn",
    "Verdict",
    "available_rubrics",
    "load_rubric",
    "read_records",
    "run_score",
    "score_frame",
]
