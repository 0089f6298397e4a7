"""The components' own end-to-end tests, run again on the cluster (see conftest.py).

Routing, rewards, join, training with publishing and hot swap, export (and its flush
across processes over sharded pub/sub), rollouts, the stats API: each keeps its
assertions, only the Redis under it changes.
"""

from __future__ import annotations

from tests.e2e.test_many_routers import (  # noqa: F401
    test_three_routers_log_every_decision_once_and_swap_on_one_announcement,
)
from tests.experiments.test_publish_api import (  # noqa: F401
    test_export_flush_asks_the_exporters_and_reports_their_answers,
    test_publish_validates_stores_and_serves,
)
from tests.experiments.test_rollout_controller import (  # noqa: F401
    test_a_canary_answering_5xx_is_rolled_back_to_zero,
    test_a_healthy_canary_walks_every_step_and_is_promoted,
    test_a_write_between_read_and_commit_is_retried_not_lost,
)
from tests.experiments.test_stats import (  # noqa: F401
    test_bandit_stats_match_hand_computed_values,
)
from tests.reward_ingest.test_export import (  # noqa: F401
    test_export_flush_command_reaches_a_running_exporter,
    test_parquet_readable_by_pandas_and_duckdb,
)
from tests.reward_ingest.test_loop import (  # noqa: F401
    test_router_decision_then_webhook_reward_then_joined,
)
from tests.router.test_policy_serving import (  # noqa: F401
    test_every_routed_request_is_logged_once_under_concurrency,
)
from tests.trainer.test_trainer import (  # noqa: F401
    test_a_crash_neither_loses_nor_repeats_an_example,
    test_the_trainer_learns_the_better_arm_and_publishes_through_the_gate,
)
