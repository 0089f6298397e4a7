"""Every learner in every mode: requests through the real router are logged, joined and learned.

One router (with the reward webhook) serves one experiment per mode; the joiner and the
trainer run in burst mode on a moved clock. In bandit mode the learned policy is
published and the running router swaps it in; in the other modes the trainer learns (an A/B test warms the bandit up) and
publishes nothing; the static learner learns nothing at all.
"""

from __future__ import annotations

import math
from typing import Any, cast

import aiohttp
import orjson
import pytest

from banditgate import keys
from banditgate.auto import serves
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.reward_ingest.conftest import Clock, joined_examples
from tests.support import run_backend, serve_asgi, wait_for
from tests.traffic import decision_count, decisions, invoke_many
from trainer.worker import Trainer

REQUESTS = 10
UPDATE_EVERY = 4

LEARNERS: dict[str, dict[str, Any]] = {
    **{
        f"vw-{kind}": {"learner": "vw", "exploration": {"type": kind}}
        for kind in ("epsilon", "cover", "bag", "softmax", "squarecb")
    },
    "thompson": {"learner": "thompson"},
    "linear_thompson": {"learner": "linear_thompson"},
    "auto": {"learner": "auto"},
    "static": {"learner": "static", "weights": {"bert-1": 1, "bert-2": 3}},
}

MODES: dict[str, dict[str, Any]] = {
    "bandit": {},
    "ab": {},
    "canary": {"canary": {"baseline": "bert-1", "canary": "bert-2"}},
    "bluegreen": {"bluegreen": {"active": "bert-1", "preview": "bert-2"}},
    "shadow": {"shadow": {"primary": "bert-1", "shadows": ["bert-2"]}},
}


def experiment_spec(
    name: str, mode: str, policy: dict[str, Any], urls: list[str]
) -> ExperimentSpec:
    return parse_spec(
        {
            "name": name,
            "mode": mode,
            "arms": [
                {"name": f"bert-{i + 1}", "url": url, "protocol": "sagemaker"}
                for i, url in enumerate(urls)
            ],
            "context": {"text": "features[0]", "headers": ["x-segment"]},
            "policy": {
                **policy,
                "update": {"every_events": UPDATE_EVERY, "every_s": 3600},
                "gate": {"enabled": False},
            },
            "reward": {"window_s": 60},
            **MODES[mode],
        }
    )


@pytest.mark.parametrize("learner", list(LEARNERS))
async def test_every_learner_in_every_mode_logs_joins_and_learns(
    redis, redis_url, name, monkeypatch, data_dir, learner
):
    names = {mode: f"{name}-{mode}" for mode in MODES}
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", ",".join(names.values()))
    store = ExperimentStore(redis)
    registry = PolicyRegistry(redis)
    clock = Clock()
    async with run_backend() as one, run_backend() as two:
        specs = {
            mode: experiment_spec(experiment, mode, LEARNERS[learner], [one.url, two.url])
            for mode, experiment in names.items()
        }
        for spec in specs.values():
            await store.put(spec)
        event_ids: dict[str, list[str]] = {}
        async with serve_asgi(serve_app(with_control=False)) as url:
            for mode, experiment in names.items():
                ids = [f"{experiment}-{i}" for i in range(REQUESTS)]
                replies = await invoke_many(url, experiment, ids, concurrency=4)
                assert [r.status for r in replies] == [200] * REQUESTS, mode
                assert [r.event_id for r in replies] == ids
                event_ids[mode] = ids
            async with aiohttp.ClientSession() as http:
                for ids in event_ids.values():
                    body = {"rewards": [{"event_id": e, "value": i % 2} for i, e in enumerate(ids)]}
                    async with http.post(f"{url}/v1/rewards", data=orjson.dumps(body)) as response:
                        assert response.status == 202, await response.text()

            # Logged: every decision, with a pmf of plain floats summing to 1.
            for mode, experiment in names.items():

                async def all_logged(experiment: str = experiment) -> bool:
                    return await decision_count(redis, experiment) >= REQUESTS

                await wait_for(all_logged)
                logged = await decisions(redis, experiment)
                assert sorted(d["event_id"] for d in logged) == sorted(event_ids[mode]), mode
                for decision in logged:
                    pmf = decision["pmf"]
                    assert all(type(p) is float for p in pmf), pmf
                    assert math.isclose(sum(pmf), 1.0), pmf
                    assert decision["mode"] == mode

            # Joined: one example each, with its reward.
            joiner = Joiner(
                redis=redis,
                settings=IngestSettings(
                    redis_url=redis_url, data_dir=data_dir, join_clock_skew_ms=0
                ),
                clock=clock,
                experiments=list(names.values()),
            )
            clock.advance(3600)
            while await joiner.run_once():
                pass
            for mode, experiment in names.items():
                joined = await joined_examples(redis, experiment)
                joined_ids = sorted(j["decision"]["event_id"] for j in joined)
                assert joined_ids == sorted(event_ids[mode]), mode
                assert all(j["rewarded"] for j in joined), mode

            # Learned: the trainer consumes every example; bandit mode publishes a policy.
            trainer = Trainer(
                redis=redis, clock=clock, batch=UPDATE_EVERY, experiments=list(names.values())
            )
            while await trainer.run_once():
                pass
            await trainer.close()
            for mode, experiment in names.items():
                state = cast(
                    dict[bytes, bytes], await redis.hgetall(keys.trainer_state(experiment))
                )
                versions = await registry.versions(experiment)
                if learner == "static":
                    assert state == {} and versions == [], mode
                    continue
                assert int(state[b"examples"]) == REQUESTS, mode
                assert state[b"learner"].decode() == specs[mode].policy.learner
                if mode == "bandit":
                    assert [v.source for v in versions] == ["trainer"], versions
                    # `auto` names the learner that won: one of its candidates.
                    assert serves(specs[mode], versions[0].learner), versions[0].learner
                    assert versions[0].learner != "auto"
                    assert await registry.current_version(experiment) == versions[0].version
                else:
                    assert versions == [], mode

            # Hot-swapped: the running router decides with the published version.
            if learner != "static":
                bandit = names["bandit"]
                published = await registry.current_version(bandit)
                sent = iter(range(1000))

                async def serving_published() -> bool:
                    await invoke_many(url, bandit, [f"{bandit}-after-{next(sent)}"])
                    logged = await decisions(redis, bandit)
                    return any(d["policy_version"] == published for d in logged)

                await wait_for(serving_published)
