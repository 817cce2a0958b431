"""psyjudge: judge chatbot responses for psychological-safety harm.

The public API. Everything else in the package is internal and may change.
"""

import os

# litellm fetches its model price list from the network at import unless told not to; set this
# before anything can import litellm, so that using psyjudge never reaches out by surprise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from judge.cascade import Cascade  # noqa: E402
from judge.ingest import ColumnMap, InputError, read_records  # noqa: E402
from judge.models import JudgeCallError, JudgeConfig, JudgeModel  # noqa: E402
from judge.rubrics import Rubric, RubricError, available_rubrics, load_rubric  # noqa: E402
from judge.runner import run_score, score_frame  # noqa: E402
from judge.schema import (  # noqa: E402
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
from judge.tiers.llm import LLMTier  # noqa: E402

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
