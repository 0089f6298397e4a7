"""The joiner's semantics, on real Redis, with its clock in the test's hands."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from banditgate import contracts, keys
from banditgate.events import decision_batch_fields
from banditgate.store import ExperimentStore
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.reward_ingest.conftest import (
    add_reward,
    audit,
    by_event,
    counters,
    decision,
    joined_examples,
    log_decisions,
    reward_spec,
)
from tests.support import wait_for


async def test_earliest_joins_at_the_first_reward_and_counts_duplicates(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="earliest")
    joiner = make_joiner()
    t = clock.ms
    await log_decisions(redis, [decision(name, "a", t), decision(name, "b", t)])
    await add_reward(redis, name, "a", 0.7, t + 10)
    await joiner.run_once()
    # Emitted at once, long before the 1 s window ends.
    (example,) = await joined_examples(redis, name)
    assert example["decision"]["event_id"] == "a"
    assert example["reward"] == 0.7 and example["rewarded"] is True and example["n_rewards"] == 1

    await add_reward(redis, name, "a", 0.1, t + 20)  # a duplicate, inside the window
    clock.advance(1.5)
    await add_reward(redis, name, "a", 0.2, clock.ms)  # after the window: late
    await joiner.run_once()

    joined = by_event(await joined_examples(redis, name))
    assert set(joined) == {"a", "b"}
    assert joined["a"]["reward"] == 0.7
    assert joined["b"]["reward"] == 0.0 and joined["b"]["rewarded"] is False
    assert joined["b"]["n_rewards"] == 0
    # The joined stream carries the decision exactly as logged.
    assert joined["b"]["decision"] == decision(name, "b", t)
    c = await counters(redis, name)
    assert c["rewards_received"] == 3 and c["rewards_joined"] == 1
    assert c["rewards_duplicate"] == 1 and c["rewards_late"] == 1
    assert c["joined"] == 2 and c["joined_rewarded"] == 1 and c["joined_default"] == 1
    assert [(a["id"], a["v"], a["why"]) for a in await audit(redis, name)] == [
        ("a", "0.1", "duplicate"),
        ("a", "0.2", "late"),
    ]


@pytest.mark.parametrize(
    ("aggregation", "expected"), [("sum", 1.75), ("mean", 0.4375), ("max", 2.0), ("min", -1.0)]
)
async def test_aggregations_emit_when_the_window_closes(
    experiment, make_joiner, redis, name, clock, aggregation, expected
):
    await experiment(aggregation=aggregation)
    joiner = make_joiner()
    t = clock.ms
    await log_decisions(redis, [decision(name, "x", t)])
    for offset, value in enumerate([0.5, 2.0, -1.0, 0.25]):
        await add_reward(redis, name, "x", value, t + offset)
    await joiner.run_once()
    assert await joined_examples(redis, name) == []  # the window is open
    clock.advance(0.999)
    await joiner.run_once()
    assert await joined_examples(redis, name) == []
    clock.advance(0.002)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == pytest.approx(expected)
    assert example["rewarded"] is True and example["n_rewards"] == 4
    assert example["joined_ts_ms"] == clock.ms


async def test_default_reward_and_window_from_the_server_timestamp(
    experiment, make_joiner, redis, name, clock
):
    await experiment(default=-0.5, window_s=3)
    joiner = make_joiner()
    await log_decisions(
        redis, [decision(name, "old", clock.ms - 2500), decision(name, "new", clock.ms)]
    )
    clock.advance(0.6)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["decision"]["event_id"] == "old"
    assert example["reward"] == -0.5 and example["rewarded"] is False


async def test_reward_before_its_decision_is_held_and_joined(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="sum")
    joiner = make_joiner()
    t = clock.ms
    await add_reward(redis, name, "early", 1.0, t)
    await add_reward(redis, name, "early", 2.0, t + 1)
    await joiner.run_once()
    assert (await counters(redis, name))["rewards_early"] == 2
    clock.advance(1.0)  # within the 2 s backward window
    await log_decisions(redis, [decision(name, "early", clock.ms)])
    await add_reward(redis, name, "early", 4.0, clock.ms + 1)
    await joiner.run_once()
    clock.advance(1.5)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 7.0 and example["n_rewards"] == 3
    assert await redis.hlen(keys.join_early(name)) == 0


async def test_early_rewards_under_earliest_keep_the_first(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="earliest")
    joiner = make_joiner()
    t = clock.ms
    await add_reward(redis, name, "e", 0.3, t)
    await add_reward(redis, name, "e", 0.9, t + 1)
    await joiner.run_once()
    await log_decisions(redis, [decision(name, "e", t + 5)])
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 0.3 and example["n_rewards"] == 1
    c = await counters(redis, name)
    assert c["rewards_joined"] == 1 and c["rewards_duplicate"] == 1


async def test_reward_that_never_matches_is_an_orphan(experiment, make_joiner, redis, name, clock):
    await experiment()
    joiner = make_joiner()
    await add_reward(redis, name, "ghost", 1.0, clock.ms)
    await joiner.run_once()
    clock.advance(1.9)
    await joiner.run_once()
    assert (await counters(redis, name)).get("rewards_orphaned", 0) == 0
    clock.advance(0.2)
    await joiner.run_once()
    c = await counters(redis, name)
    assert c["rewards_orphaned"] == 1 and c["rewards_received"] == 1
    assert [(a["id"], a["why"]) for a in await audit(redis, name)] == [("ghost", "orphan")]
    assert await redis.hlen(keys.join_early(name)) == 0


async def test_late_reward_for_a_closed_decision(experiment, make_joiner, redis, name, clock):
    await experiment(aggregation="mean")
    joiner = make_joiner()
    t = clock.ms
    await log_decisions(redis, [decision(name, "d", t)])
    await joiner.run_once()
    clock.advance(1.2)
    await joiner.run_once()
    await add_reward(redis, name, "d", 5.0, clock.ms)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["rewarded"] is False
    c = await counters(redis, name)
    assert c["rewards_late"] == 1 and c.get("rewards_joined", 0) == 0
    assert [(a["id"], a["v"], a["why"]) for a in await audit(redis, name)] == [("d", "5.0", "late")]


async def test_reward_stamped_after_the_window_is_late_even_if_the_decision_is_open(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="sum")
    joiner = make_joiner()
    t = clock.ms
    await log_decisions(redis, [decision(name, "d", t)])
    await add_reward(redis, name, "d", 1.0, t + 999)
    await add_reward(redis, name, "d", 2.0, t + 1000)
    clock.advance(5)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 1.0 and example["n_rewards"] == 1
    assert (await counters(redis, name))["rewards_late"] == 1


async def test_closed_ids_are_forgotten_after_the_retention(
    experiment, make_joiner, redis, name, clock, settings
):
    await experiment()
    joiner = make_joiner(settings=settings.model_copy(update={"join_closed_retention_s": 10}))
    await log_decisions(redis, [decision(name, "d", clock.ms)])
    clock.advance(2)
    await joiner.run_once()
    assert await redis.zscore(keys.join_closed(name), "d") is not None
    clock.advance(9.5)
    await joiner.run_once()
    assert await redis.zcard(keys.join_closed(name)) == 0
    # Now a reward for it is an orphan, not late: nothing remembers the decision.
    await add_reward(redis, name, "d", 1.0, clock.ms)
    await joiner.run_once()
    clock.advance(3)
    await joiner.run_once()
    c = await counters(redis, name)
    assert c["rewards_orphaned"] == 1 and c.get("rewards_late", 0) == 0


async def test_a_decision_logged_twice_is_joined_once(experiment, make_joiner, redis, name, clock):
    await experiment(aggregation="sum")
    joiner = make_joiner()
    t = clock.ms
    batch = [decision(name, "twice", t), decision(name, "once", t)]
    await log_decisions(redis, batch)
    await log_decisions(redis, batch[:1])  # the router retried a flush that had succeeded
    await add_reward(redis, name, "twice", 1.0, t + 1)
    await joiner.run_once()
    clock.advance(2)
    await log_decisions(redis, batch[:1])  # and again, after it closed
    await joiner.run_once()
    joined = by_event(await joined_examples(redis, name))
    assert set(joined) == {"twice", "once"}
    assert joined["twice"]["reward"] == 1.0
    assert (await counters(redis, name))["decisions_duplicate"] == 2


async def test_untrusted_stream_entries_are_counted_not_fatal(
    experiment, make_joiner, redis, name, clock
):
    await experiment()
    joiner = make_joiner()
    t = clock.ms
    await redis.xadd(keys.decisions(name), {"n": 1, "b": b"not json"})
    await redis.xadd(keys.decisions(name), {"garbage": 1})
    good = decision(name, "good", t)
    await redis.xadd(
        keys.decisions(name),
        {"n": 3, "b": orjson.dumps([good, {"event_id": 5}, "x"])},
    )
    await redis.xadd(keys.rewards(name), {"id": "good", "v": "abc", "ts": t})
    await redis.xadd(keys.rewards(name), {"id": "good", "v": "nan", "ts": t})
    await redis.xadd(keys.rewards(name), {"id": "good", "v": "99", "ts": t})  # outside [-10, 10]
    await redis.xadd(keys.rewards(name), {"nothing": "here"})
    await add_reward(redis, name, "good", 1.0, t)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 1.0
    c = await counters(redis, name)
    assert c["decisions_invalid"] == 4 and c["rewards_invalid"] == 4
    assert await redis.xpending(keys.rewards(name), contracts.JOINER_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_counters_add_up(experiment, make_joiner, redis, name, clock):
    await experiment(aggregation="sum")
    joiner = make_joiner()
    t = clock.ms
    await log_decisions(redis, [decision(name, f"d{i}", t) for i in range(20)])
    for i in range(0, 20, 2):
        await add_reward(redis, name, f"d{i}", 1.0, t + 5)
    await add_reward(redis, name, "nobody", 1.0, t + 5)
    await add_reward(redis, name, "later", 1.0, t + 5)
    await joiner.run_once()
    c = await counters(redis, name)
    held = await redis.hlen(keys.join_early(name))
    assert held == 2
    assert c["rewards_received"] == c["rewards_joined"] + held
    clock.advance(3)
    await joiner.run_once()
    c = await counters(redis, name)
    assert c["decisions_received"] == c["joined"] == 20
    assert c["joined"] == c["joined_rewarded"] + c["joined_default"]
    assert c["rewards_received"] == (
        c["rewards_joined"]
        + c.get("rewards_duplicate", 0)
        + c.get("rewards_late", 0)
        + c["rewards_orphaned"]
    )


async def test_windows_wait_for_the_reward_backlog(
    experiment, make_joiner, redis, name, clock, settings
):
    """After an outage, a window that ended meanwhile still gets the rewards waiting behind it."""
    await experiment(aggregation="sum")
    joiner = make_joiner(settings=settings.model_copy(update={"join_reward_batch": 3}))
    t = clock.ms - 60_000  # everything happened a minute ago, while the joiner was down
    batch = [decision(name, f"d{i}", t) for i in range(4)]
    await redis.xadd(keys.decisions(name), decision_batch_fields(batch), id=f"{t}-0")
    for i in range(4):
        for n in range(3):
            fields = {"id": f"d{i}", "v": "1.0", "ts": t + 10 + i * 200}
            await redis.xadd(keys.rewards(name), fields, id=f"{t + 10 + i * 200}-{n}")
    await joiner.refresh()
    await joiner.ensure_groups(name)
    first = await joiner.read(name)
    assert len(first.rewards) == 3 and first.rewards_mark is not None
    await joiner.apply(name, first)
    # All windows ended long ago, but rewards stamped before their ends are still unread:
    # only the window the read has passed may close.
    assert await joined_examples(redis, name) == []
    second = await joiner.read(name)
    await joiner.apply(name, second)
    assert [ex["decision"]["event_id"] for ex in await joined_examples(redis, name)] == []
    await joiner.run_once()
    joined = by_event(await joined_examples(redis, name))
    assert {event: ex["reward"] for event, ex in joined.items()} == {f"d{i}": 3.0 for i in range(4)}


async def test_windows_wait_for_rewards_another_joiner_holds(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="sum")
    t = clock.ms
    await log_decisions(redis, [decision(name, "d", t)])
    await add_reward(redis, name, "d", 2.0, t + 1)
    slow = make_joiner(consumer="slow")
    await slow.ensure_groups(name)
    held = await slow.redis.xreadgroup(
        contracts.JOINER_GROUP, "slow", {keys.rewards(name): ">"}, count=10
    )
    assert held  # read, not yet applied (as if that joiner were mid-batch, or dead)
    clock.advance(5)
    other = make_joiner(consumer="other")
    await other.run_once()
    assert await joined_examples(redis, name) == []
    # The silent consumer's reward is taken over once it has been idle long enough.
    taker = make_joiner(
        consumer="taker", settings=other.settings.model_copy(update={"join_claim_idle_ms": 1})
    )
    await asyncio.sleep(0.01)
    await taker.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 2.0


async def test_several_joiners_share_the_work_without_duplicates(
    experiment, make_joiner, redis, name, clock, settings
):
    await experiment(aggregation="sum")
    small = settings.model_copy(update={"join_decision_entries": 1, "join_reward_batch": 7})
    joiners = [make_joiner(consumer=f"j{i}", settings=small) for i in range(3)]
    t = clock.ms
    for batch in range(10):
        await log_decisions(redis, [decision(name, f"d{batch}-{i}", t) for i in range(10)])
    for batch in range(10):
        for i in range(10):
            await add_reward(redis, name, f"d{batch}-{i}", float(i), t + 1)
            await add_reward(redis, name, f"d{batch}-{i}", 0.5, t + 2)
    await asyncio.gather(*(joiner.run_once() for joiner in joiners))
    clock.advance(2)
    await asyncio.gather(*(joiner.run_once() for joiner in joiners))
    joined = by_event(await joined_examples(redis, name))
    assert len(joined) == 100
    for event_id, example in joined.items():
        assert example["reward"] == float(event_id.rsplit("-", 1)[1]) + 0.5
        assert example["n_rewards"] == 2


async def test_unrouted_reward_is_resolved_when_the_decision_appears(
    experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="sum")
    joiner = make_joiner()
    t = clock.ms
    await redis.xadd(keys.UNROUTED_REWARDS, {"id": f"{name}-u", "v": "2.5", "ts": t})
    await joiner.run_once()
    assert await joined_examples(redis, name) == []
    await log_decisions(redis, [decision(name, f"{name}-u", t + 5)])
    # The resolver looks again once the entry has waited `unrouted_retry_ms`.
    fast = make_joiner(settings=joiner.settings.model_copy(update={"unrouted_retry_ms": 1}))
    await asyncio.sleep(0.01)
    await fast.run_once()
    await fast.run_once()
    clock.advance(2)
    await fast.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 2.5 and example["rewarded"] is True
    c = await counters(redis, name)
    assert c["rewards_received"] == 1 and c["rewards_joined"] == 1


async def test_a_repeated_move_counts_once(experiment, make_joiner, redis, name, clock):
    await experiment(aggregation="sum")
    joiner = make_joiner(resolve_unrouted=False)
    t = clock.ms
    await log_decisions(redis, [decision(name, "m", t)])
    for _ in range(2):  # the resolver crashed between its append and its acknowledgement
        await redis.xadd(keys.rewards(name), {"id": "m", "v": "1.0", "ts": t, "u": "1-1"})
    clock.advance(2)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 1.0 and example["n_rewards"] == 1
    assert (await counters(redis, name))["rewards_redelivered"] == 1


async def test_unrouted_reward_that_never_resolves_is_an_orphan(redis, make_joiner, clock, name):
    await ExperimentStore(redis).put(reward_spec(name, backward_window_s=1))
    joiner = make_joiner(
        settings=make_joiner().settings.model_copy(update={"unrouted_retry_ms": 1})
    )
    before = await redis.hgetall(keys.UNROUTED_COUNTERS)
    event_id = f"{name}-never"
    await redis.xadd(keys.UNROUTED_REWARDS, {"id": event_id, "v": "1.0", "ts": clock.ms})
    await joiner.run_once()
    clock.advance(600)  # past the longest backward window of every experiment
    await asyncio.sleep(0.01)
    await joiner.run_once()
    after = await redis.hgetall(keys.UNROUTED_COUNTERS)
    assert int(after[b"rewards_orphaned"]) == int(before.get(b"rewards_orphaned", 0)) + 1
    orphans = [
        f for _, f in await redis.xrange(keys.UNROUTED_ORPHANS) if f[b"id"] == event_id.encode()
    ]
    assert len(orphans) == 1


async def test_run_picks_up_new_experiments_and_stops_promptly(redis, redis_url, data_dir, name):
    settings = IngestSettings(
        redis_url=redis_url,
        data_dir=data_dir,
        join_refresh_s=0.05,
        join_clock_skew_ms=0,
        experiments=[name],
    )
    joiner = Joiner(redis=redis, settings=settings, consumer="runner")
    stop = asyncio.Event()
    task = asyncio.create_task(joiner.run(stop))
    await ExperimentStore(redis).put(reward_spec(name, aggregation="earliest", window_s=60))
    now_ms = int(time.time() * 1000)
    await log_decisions(redis, [decision(name, "live", now_ms)])
    await add_reward(redis, name, "live", 1.0, now_ms + 1)

    async def joined() -> bool:
        return len(await joined_examples(redis, name)) == 1

    await wait_for(joined)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    # Stopping left nothing pending and took its consumer out of the groups.
    for stream in (keys.decisions(name), keys.rewards(name)):
        assert (await redis.xpending(stream, contracts.JOINER_GROUP))["pending"] == 0
        consumers = await redis.xinfo_consumers(stream, contracts.JOINER_GROUP)
        assert [c["name"] for c in consumers] == []


async def test_experiments_filter(redis, redis_url, data_dir, name, monkeypatch):
    other = f"{name}-x"
    for experiment_name in (name, other):
        await ExperimentStore(redis).put(reward_spec(experiment_name))
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", f"{name}, somewhere-else")
    joiner = Joiner(redis=redis, settings=IngestSettings(redis_url=redis_url, data_dir=data_dir))
    specs = await joiner.refresh()
    assert name in specs and other not in specs


async def test_batches_stay_one_entry_per_router_flush(experiment, make_joiner, redis, name, clock):
    await experiment()
    joiner = make_joiner()
    decisions = [decision(name, f"b{i}", clock.ms) for i in range(2000)]
    await redis.xadd(keys.decisions(name), decision_batch_fields(decisions))
    clock.advance(2)
    await joiner.run_once()
    assert len(await joined_examples(redis, name)) == 2000


async def test_unicode_event_ids_and_large_decisions(experiment, make_joiner, redis, name, clock):
    await experiment(aggregation="max")
    joiner = make_joiner()
    event_id = "évènement-☃-42"
    big = decision(name, event_id, clock.ms, context={f"c.{i}": "v" * 100 for i in range(500)})
    await log_decisions(redis, [big])
    await add_reward(redis, name, event_id, 0.25, clock.ms + 1)
    await add_reward(redis, name, event_id, 0.75, clock.ms + 2)
    clock.advance(2)
    await joiner.run_once()
    (example,) = await joined_examples(redis, name)
    assert example["decision"] == big
    assert example["reward"] == 0.75 and example["n_rewards"] == 2


async def test_an_unreadable_stored_spec_is_skipped_not_fatal(
    experiment, make_joiner, redis, name, clock
):
    await experiment()
    broken = f"{name}-broken"
    await redis.set(keys.spec(broken), b'{"name": "%s", "arms": []}' % broken.encode())
    await redis.sadd(keys.EXPERIMENTS, broken)
    try:
        joiner = make_joiner(experiments=[name, broken])
        specs = await joiner.refresh()
        assert name in specs and broken not in specs
        await log_decisions(redis, [decision(name, "fine", clock.ms)])
        await add_reward(redis, name, "fine", 1.0, clock.ms)
        await joiner.run_once()
        assert len(await joined_examples(redis, name)) == 1
    finally:
        await redis.srem(keys.EXPERIMENTS, broken)
        await redis.delete(keys.spec(broken))


async def test_deleting_an_experiment_while_running(redis, redis_url, data_dir, name, caplog):
    other = f"{name}-b"
    store = ExperimentStore(redis)
    for experiment_name in (name, other):
        await store.put(reward_spec(experiment_name, aggregation="earliest", window_s=60))
    settings = IngestSettings(redis_url=redis_url, data_dir=data_dir, join_refresh_s=0.05)
    joiner = Joiner(redis=redis, settings=settings, experiments=[name, other], consumer="deleter")
    stop = asyncio.Event()
    task = asyncio.create_task(joiner.run(stop))
    now_ms = int(time.time() * 1000)
    try:
        await log_decisions(redis, [decision(name, "a", now_ms)])
        await add_reward(redis, name, "a", 1.0, now_ms)

        async def joined_a() -> bool:
            return len(await joined_examples(redis, name)) == 1

        await wait_for(joined_a)
        await store.delete(name)
        await log_decisions(redis, [decision(other, "b", now_ms)])
        await add_reward(redis, other, "b", 1.0, now_ms)

        async def joined_b() -> bool:
            return len(await joined_examples(redis, other)) == 1

        await wait_for(joined_b)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # Nothing was recreated for the deleted experiment.
    assert [key async for key in redis.scan_iter(match=keys.experiment_keys_pattern(name))] == []
