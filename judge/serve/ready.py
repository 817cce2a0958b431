"""Readiness: whether this server can judge now, check by check.

- rubrics: loaded and checked when the server was built;
- warm-up: the tiers that run on this machine (rules, classifier) each judged a small record under
  every rubric at start-up without an error (the classifier's model is then loaded and has run);
- judge: for an OpenAI-compatible endpoint (an api_base: a local llama.cpp server, vLLM, a proxy),
  its model list answers; a hosted provider is not probed (a probe would need a paid call), which
  the check says.

The judge probe is cached for a few seconds: an orchestrator polling /readyz must not become the
judge's heaviest client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from judge.models import JudgeModel
from judge.rubrics import Rubric
from judge.schema import Record, Role, Turn
from judge.serve.api import Check
from judge.tiers.base import Tier

PROBE_TTL_S = 5.0
PROBE_TIMEOUT_S = 2.0
LOCAL_TIERS = ("rules", "classifier")

WARM_UP = Record(id="warm-up", turns=[Turn(role=Role.USER, content="Can you help me sleep better?")],
                 response="Keep a regular wake-up time and dim screens an hour before bed.")


async def warm_up(tiers: Sequence[Tier], rubrics: Sequence[Rubric]) -> Check:
    """Run the local tiers once under every rubric, so that the first request pays no loading cost
    and a tier that cannot run is found before traffic arrives."""
    ran: list[str] = []
    for tier in tiers:
        if tier.name not in LOCAL_TIERS:
            continue
        for rubric in rubrics:
            try:
                result = await tier(WARM_UP, rubric)
            except Exception as exc:  # a tier that crashes at warm-up keeps the server unready, not dead
                return Check(name="warm-up", ok=False, detail=f"{tier.name} under {rubric.key} crashed: "
                             f"{type(exc).__name__}: {exc}")
            if result.error is not None:
                return Check(name="warm-up", ok=False, detail=f"{tier.name} under {rubric.key}: {result.error}")
        ran.append(tier.name)
    detail = f"{', '.join(ran)} ran under {len(rubrics)} rubric(s)" if ran else "no local tier to warm up"
    return Check(name="warm-up", ok=True, detail=detail)


class JudgeProbe:
    """Whether the LLM judge can be reached, cached for PROBE_TTL_S."""

    def __init__(self, model: JudgeModel | None, ttl_s: float = PROBE_TTL_S) -> None:
        self.model = model
        self.ttl_s = ttl_s
        self._cached: tuple[float, Check] | None = None

    async def check(self) -> Check:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.ttl_s:
            return self._cached[1]
        found = await self._probe()
        self._cached = (now, found)
        return found

    async def _probe(self) -> Check:
        if self.model is None:
            return Check(name="judge", ok=True, detail="not used: no llm tier")
        base = self.model.api_base
        name = self.model.config.model
        if not base:
            return Check(name="judge", ok=True, detail=f"{name}: a hosted provider, not probed (its key and "
                         "reachability show on the first call)")
        url = base.rstrip("/") + "/models"
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
                reply = await client.get(url)
        except httpx.HTTPError as exc:
            return Check(name="judge", ok=False, detail=f"{name} at {base}: unreachable ({type(exc).__name__})")
        if reply.status_code in (401, 403):
            return Check(name="judge", ok=False, detail=f"{name} at {base}: the key was refused "
                         f"(HTTP {reply.status_code})")
        if reply.status_code >= 500:
            return Check(name="judge", ok=False, detail=f"{name} at {base}: HTTP {reply.status_code}")
        # 404: a server without a model list still answered, which is what this asks.
        return Check(name="judge", ok=True, detail=f"{name} at {base}: reachable (HTTP {reply.status_code})")
