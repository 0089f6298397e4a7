"""The webhook's own counters (`banditgate_ingest_*`): what this process accepted.

Per process, like the router's: every webhook replica counts the rewards it took, so a
scrape of every pod summed gives the total (the join counters in Redis, exported once by
the control plane, say what became of them).
"""

from __future__ import annotations

from banditgate.metrics import ProcessMetrics
from reward_ingest.intake import IntakeResult


class IngestMetrics:
    def __init__(self, metrics: ProcessMetrics) -> None:
        self.process = metrics
        self.accepted = metrics.counter(
            "banditgate_ingest_rewards_accepted",
            "Rewards this process accepted (written to a reward stream or the unrouted one).",
        )
        self.unrouted = metrics.counter(
            "banditgate_ingest_rewards_unrouted",
            "Accepted rewards whose experiment was not known yet (left to the resolver).",
        )
        self.rejected = metrics.counter(
            "banditgate_ingest_rewards_rejected",
            "Rewards this process refused (bad value, unknown experiment, malformed item).",
        )

    def count(self, result: IntakeResult) -> None:
        self.accepted.inc(result.accepted)
        self.unrouted.inc(result.unrouted)
        self.rejected.inc(result.rejected)
