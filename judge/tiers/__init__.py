"""Tiers: each is `async (record, rubric) -> TierResult`, registered by name with @register_tier."""
