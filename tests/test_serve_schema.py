"""The guardrail service against its own OpenAPI schema: schemathesis generates requests from the
schema, valid and invalid, and checks every answer: no 5xx, a documented status code, a body that
conforms to the documented schema, invalid data rejected and valid data accepted. The rules tier
alone serves, so that every example takes milliseconds."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from judge.cascade import CascadeConfig
from judge.models import JudgeConfig
from judge.rubrics import load_rubric
from judge.runner import build_cascade
from judge.serve import ServeSettings, create_app

_cascade, _ = build_cascade(JudgeConfig(model="none"), CascadeConfig(tiers=["rules"]))
# Small limits, so that the generated bodies reach them.
app = create_app(_cascade, [load_rubric("self_harm"), load_rubric("substance_misuse")],
                 ServeSettings(max_turns=4, max_chars=400, max_body_bytes=16_384))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_service_keeps_to_its_schema(case: Case[Any]) -> None:
    case.call_and_validate()
