"""Tiers: each is `async (record, rubric) -> TierResult`, registered by name with @register_tier."""

from judge.tiers.base import TIERS, Tier, register_tier

__all__ = ["TIERS", "Tier", "register_tier"]
