"""A reward key limited to some experiments sends rewards for those only."""

from __future__ import annotations

from pydantic import SecretStr

from banditgate.store import ExperimentStore
from tests.reward_ingest.conftest import reward_spec
from tests.reward_ingest.test_webhook import post


async def test_a_scoped_reward_key(ingest_url, redis, name) -> None:
    mine, other = f"team-a-{name}", f"team-b-{name}"
    for experiment in (mine, other):
        await ExperimentStore(redis).put(reward_spec(experiment))
    url = await ingest_url(reward_keys=[SecretStr("all"), SecretStr("team@team-a-*")])
    team = {"authorization": "Bearer team"}
    batch = {
        "rewards": [
            {"event_id": "e-1", "value": 0.5, "experiment": mine},
            {"event_id": "e-2", "value": 0.5, "experiment": other},
            {"event_id": f"{name}-unknown", "value": 0.5},
        ]
    }
    status, body = await post(f"{url}/v1/rewards", batch, headers=team)
    assert status == 202
    assert body["accepted"] == 1
    assert [(e["index"], e["type"], e["field"]) for e in body["errors"]] == [
        (1, "Forbidden", "rewards[1].experiment"),
        (2, "Forbidden", "rewards[2].experiment"),
    ]
    assert "name the experiment" in body["errors"][1]["message"]
    status, body = await post(
        f"{url}/v1/events/e-3/reward?experiment={other}", {"value": 0.5}, headers=team
    )
    assert status == 403
    # An unscoped key sends for any experiment, and unrouted ones too.
    status, body = await post(f"{url}/v1/rewards", batch, headers={"authorization": "Bearer all"})
    assert status == 202 and body["accepted"] == 3 and body["unrouted"] == 1
    for experiment in (mine, other):
        await ExperimentStore(redis).delete(experiment)
