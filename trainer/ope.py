"""The off-policy estimators, which live in the core (`banditgate.ope`): the control plane's
publish check uses them too. Re-exported here for the trainer's modules."""

from __future__ import annotations

from banditgate.ope import (
    BOOTSTRAP_REPLICATES,
    BOOTSTRAP_SEED,
    GATE_INTERVAL,
    INTERVALS,
    PAIRED_INTERVAL,
    Z95,
    Bounds,
    Estimate,
    all_estimates,
    bootstrap_t,
    dr,
    dr_interval,
    ips,
    paired_difference,
    snips,
)

__all__ = [
    "BOOTSTRAP_REPLICATES",
    "BOOTSTRAP_SEED",
    "GATE_INTERVAL",
    "INTERVALS",
    "PAIRED_INTERVAL",
    "Z95",
    "Bounds",
    "Estimate",
    "all_estimates",
    "bootstrap_t",
    "dr",
    "dr_interval",
    "ips",
    "paired_difference",
    "snips",
]
