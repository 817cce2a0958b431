"""The one contract every tier meets, and the registry that names them.

A tier is an async callable `(record, rubric) -> TierResult`. It answers with a label and a
confidence, or abstains (label None); it reports failure in `error` and never as a label. A new
tier is one file with a @register_tier factory; the cascade builds tiers by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from judge.rubrics import Rubric
from judge.schema import Record, TierResult


class Tier(Protocol):
    name: str

    async def __call__(self, record: Record, rubric: Rubric) -> TierResult: ...


TierFactory = Callable[..., Tier]
TIERS: dict[str, TierFactory] = {}


def register_tier(name: str) -> Callable[[TierFactory], TierFactory]:
    def decorate(factory: TierFactory) -> TierFactory:
        if name in TIERS:
            raise ValueError(f"tier {name!r} is already registered")
        TIERS[name] = factory
        return factory

    return decorate


def build_tier(name: str, **options: Any) -> Tier:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; expected one of {', '.join(sorted(TIERS))}")
    return TIERS[name](**options)
