"""Data-quality and drift monitoring of captured traffic against a baseline (a component)."""
