"""Every Redis key and channel name. Per-experiment keys carry the name as a cluster hash tag.

Field, counter and consumer-group names are in `banditgate.contracts`.
"""

from __future__ import annotations

EXPERIMENTS = "bg:experiments"
ANNOUNCE_CHANNEL = "bg:announce"
# Set by every router: a Redis without it has lost its data (restarted empty), so the
# routers write back the specs and policies they serve.
DATA_MARKER = "bg:data-marker"
# Rewards whose experiment is not known yet, and their bookkeeping: one hash tag, one slot.
UNROUTED_REWARDS = "bg:{unrouted}:rewards"
UNROUTED_COUNTERS = "bg:{unrouted}:counters"
UNROUTED_ORPHANS = "bg:{unrouted}:orphans"
EXPORT_FLUSH_CHANNEL = "bg:export:flush"


def _tag(experiment: str) -> str:
    return f"bg:{{{experiment}}}"


def spec(experiment: str) -> str:
    return f"{_tag(experiment)}:spec"


def spec_history(experiment: str) -> str:
    return f"{_tag(experiment)}:spec:history"


def weights(experiment: str) -> str:
    return f"{_tag(experiment)}:weights"


def decisions(experiment: str) -> str:
    return f"{_tag(experiment)}:decisions"


def rewards(experiment: str) -> str:
    return f"{_tag(experiment)}:rewards"


def joined(experiment: str) -> str:
    return f"{_tag(experiment)}:joined"


def event_index(bucket: int) -> str:
    """Event id -> experiment, for rewards that do not name their experiment."""
    return f"bg:evidx:{bucket}"


def policy_seq(experiment: str) -> str:
    return f"{_tag(experiment)}:policy:seq"


def policy_current(experiment: str) -> str:
    return f"{_tag(experiment)}:policy:current"


def policy_versions(experiment: str) -> str:
    return f"{_tag(experiment)}:policy:versions"


def policy_model(experiment: str, version: int) -> str:
    return f"{_tag(experiment)}:policy:model:{version}"


def policy_history(experiment: str) -> str:
    return f"{_tag(experiment)}:policy:history"


def candidates(experiment: str) -> str:
    return f"{_tag(experiment)}:policy:candidates"


def trainer_state(experiment: str) -> str:
    return f"{_tag(experiment)}:trainer:state"


def trainer_lock(experiment: str) -> str:
    return f"{_tag(experiment)}:trainer:lock"


def join_pending(experiment: str) -> str:
    return f"{_tag(experiment)}:join:pending"


def join_deadlines(experiment: str) -> str:
    return f"{_tag(experiment)}:join:deadlines"


def join_rewards(experiment: str) -> str:
    return f"{_tag(experiment)}:join:rewards"


def join_early(experiment: str) -> str:
    return f"{_tag(experiment)}:join:early"


def join_early_deadlines(experiment: str) -> str:
    return f"{_tag(experiment)}:join:early:deadlines"


def join_closed(experiment: str) -> str:
    return f"{_tag(experiment)}:join:closed"


def join_late(experiment: str) -> str:
    return f"{_tag(experiment)}:join:late"


def join_moved(experiment: str) -> str:
    """Unrouted rewards already moved here, so a move repeated after a crash counts once."""
    return f"{_tag(experiment)}:join:moved"


def export_committed(experiment: str) -> str:
    """Export files acknowledged in Redis but not yet renamed into place."""
    return f"{_tag(experiment)}:export:committed"


def export_flush_reply(request: str) -> str:
    return f"bg:export:flushed:{request}"


def join_counters(experiment: str) -> str:
    return f"{_tag(experiment)}:join:counters"


def control_lock(experiment: str) -> str:
    """Serialises the control plane's read-modify-write of one experiment's spec and weights."""
    return f"{_tag(experiment)}:control:lock"


def rollout_state(experiment: str) -> str:
    return f"{_tag(experiment)}:rollout"


def rollout_lock(experiment: str) -> str:
    return f"{_tag(experiment)}:rollout:lock"


def variant_weights(experiment: str) -> str:
    """Raw SageMaker-style variant weights and instance counts, with the split they produced."""
    return f"{_tag(experiment)}:variants"


def shadow_results(experiment: str) -> str:
    return f"{_tag(experiment)}:shadow"


def worker_heartbeat(host: str, worker: str) -> str:
    """Renewed while a background worker runs on `host`; expires when it stops or dies."""
    return f"bg:workers:{host}:{worker}"


def experiment_keys_pattern(experiment: str) -> str:
    return f"{_tag(experiment)}:*"


# Deferred activation (Personalizer's deferActivation): a decision waits here until
# activated (then it is logged like any other), or is dropped and counted at its deadline.
def deferred(experiment: str) -> str:
    """Hash: event id -> the decision's JSON, until activated or dropped."""
    return f"{_tag(experiment)}:deferred"


def deferred_deadlines(experiment: str) -> str:
    """Sorted set: event id scored by the time (ms) after which it is dropped unactivated."""
    return f"{_tag(experiment)}:deferred:deadlines"


def personalizer_settings(experiment: str) -> str:
    """Personalizer service settings with no spec field (logRetentionDays...), as JSON."""
    return f"{_tag(experiment)}:personalizer"


def log_writer_seq(experiment: str, writer: str) -> str:
    """The last batch sequence number one router's log writer stored in this experiment's
    stream: a batch replayed after a write that may have happened is skipped, not doubled."""
    return f"{_tag(experiment)}:logseq:{writer}"


def monitor_baseline(experiment: str) -> str:
    """The data-quality baseline (statistics and constraints JSON) the monitor compares to."""
    return f"{_tag(experiment)}:monitor:baseline"


def monitor_latest(experiment: str) -> str:
    """Hash arm -> the monitor's latest report for that arm (JSON)."""
    return f"{_tag(experiment)}:monitor:latest"


def monitor_lease(experiment: str) -> str:
    """Held by the monitor worker checking this experiment now (one at a time)."""
    return f"{_tag(experiment)}:monitor:lease"


def ground_truth(experiment: str) -> str:
    """Ground-truth labels posted for this experiment's events (one entry per label)."""
    return f"{_tag(experiment)}:groundtruth"


def ground_truth_counters(experiment: str) -> str:
    """Hash: labels received, and labels for events no router logged (or long expired)."""
    return f"{_tag(experiment)}:groundtruth:counters"


def monitor_quality(experiment: str) -> str:
    """Hash arm -> the latest model-quality report (JSON), from ground truth."""
    return f"{_tag(experiment)}:monitor:quality"
