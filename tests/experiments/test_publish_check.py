"""A model published by hand is evaluated off-policy and refused when significantly worse.

The story of the bug: a model trained by stock VW (default flags) on an exported DSJSON
file from an earlier period, when the other arm was better, was accepted and sent 98% of
the traffic to what is now the worse arm. Now the recent joined examples show it.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import vowpalwabbit
from typer.testing import CliRunner, Result

from banditgate import keys
from banditgate.linear_thompson import LinearThompsonModel
from banditgate.policy import workspace_to_bytes
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from banditgate_app.cli import app
from reward_ingest.dsjson import dsjson_line
from tests.experiments.conftest import ADMIN_KEY, Control
from tests.trainer.conftest import decision, uniform_log, write_joined

ARMS = ("bert-1", "bert-2")
CONTEXT = {"t.len": "15", "t.pos": "1"}


def spec_doc(name: str, learner: str = "vw") -> dict[str, object]:
    policy: dict[str, object] = {"learner": learner}
    if learner == "static":
        policy["weights"] = {"bert-1": 1, "bert-2": 1}
    return {
        "name": name,
        "arms": [
            {"name": arm, "url": "http://127.0.0.1:9", "protocol": "sagemaker"} for arm in ARMS
        ],
        "context": {"text": "features[0]"},
        "policy": policy,
    }


def logged(name: str, n: int, rates: dict[str, float], seed: int):  # type: ignore[no-untyped-def]
    return uniform_log(name, n, rates, seed=seed, context_of=lambda i, rng: dict(CONTEXT))


def stock_vw_model(name: str, path: Path, rates: dict[str, float]) -> Path:
    """Export joined examples as the exporter writes DSJSON, train VW with its default flags."""
    export = path / "export.json"
    with export.open("wb") as handle:
        for d, reward in logged(name, 1500, rates, seed=11):
            joined = {"decision": d, "reward": reward, "rewarded": True, "n_rewards": 1}
            handle.write(dsjson_line(joined, {}))  # type: ignore[arg-type]
    workspace = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    for line in export.read_text().splitlines():
        workspace.learn(line)
    model = path / "model.vw"
    model.write_bytes(workspace_to_bytes(workspace))
    return model


async def cli(control: Control, *args: str) -> Result:
    env = {"BANDITGATE_URL": control.url, "BANDITGATE_ADMIN_KEY": ADMIN_KEY, "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_a_stock_vw_model_preferring_the_worse_arm_is_refused_unless_forced(
    control: Control, redis, name: str, tmp_path: Path
) -> None:
    assert (await control.call("POST", "/v1/experiments", spec_doc(name)))[0] == 201
    # Now bert-1 is the better arm; in the exported period bert-2 was.
    await write_joined(redis, name, logged(name, 1500, {"bert-1": 0.6, "bert-2": 0.4}, seed=5))
    model = stock_vw_model(name, tmp_path, {"bert-1": 0.3, "bert-2": 0.6})

    refused = await cli(control, "policy", "publish", str(model), "-e", name)
    assert refused.exit_code == 1, refused.output
    out = refused.output
    assert "refused: significantly worse than the serving policy" in out
    assert "HTTP 409 PolicyRefused" in out and "--force" in out
    for estimator in ("ips", "snips", "dr"):
        assert f"\n  {estimator} " in out  # one row of estimates each, with intervals
    assert "last 1500 joined examples" in out
    registry = PolicyRegistry(redis)
    assert await registry.versions(name) == []
    assert await redis.get(keys.policy_seq(name)) is None  # not even a version number

    # The API answers with the numbers too.
    body = {"model": base64.b64encode(model.read_bytes()).decode()}
    status, answer = await control.call("POST", f"/v1/experiments/{name}/policies", body)
    assert status == 409 and answer["error"]["type"] == "PolicyRefused"
    check = answer["error"]["ope"]
    assert check["refused"] and check["n"] == 1500 and check["estimator"] == "dr"
    difference = check["numbers"]["difference"]["dr"]
    assert difference["hi"] < 0 and difference["value"] < -0.05

    forced = await cli(control, "policy", "publish", str(model), "-e", name, "--force")
    assert forced.exit_code == 0, forced.output
    assert "forced past the check" in forced.output and "\n  dr " in forced.output
    assert "published" in forced.output and "policy version 1" in forced.output
    (version,) = await registry.versions(name)
    assert await registry.current_version(name) == 1
    assert "forced past the off-policy check" in version.note
    assert version.ope["publish_check"]["forced"] is True
    assert version.ope["candidate"]["dr"]["value"] < version.ope["current"]["dr"]["value"]


async def test_a_better_model_passes_and_activate_is_checked_too(
    control: Control, redis, name: str, tmp_path: Path
) -> None:
    assert (await control.call("POST", "/v1/experiments", spec_doc(name)))[0] == 201
    await write_joined(redis, name, logged(name, 1500, {"bert-1": 0.6, "bert-2": 0.4}, seed=6))
    (tmp_path / "good").mkdir()
    good = stock_vw_model(name, tmp_path / "good", {"bert-1": 0.6, "bert-2": 0.4})
    accepted = await cli(control, "policy", "publish", str(good), "-e", name)
    assert accepted.exit_code == 0, accepted.output
    assert "not significantly worse than the serving policy" in accepted.output
    assert "\n  ips " in accepted.output

    (tmp_path / "bad").mkdir()
    bad = stock_vw_model(name, tmp_path / "bad", {"bert-1": 0.3, "bert-2": 0.6})
    kept = await cli(control, "policy", "publish", str(bad), "-e", name, "--force", "--no-activate")
    assert kept.exit_code == 0, kept.output
    registry = PolicyRegistry(redis)
    assert await registry.current_version(name) == 1

    status, answer = await control.call("POST", f"/v1/experiments/{name}/policies/2/activate")
    assert status == 409 and answer["error"]["ope"]["refused"], answer
    assert await registry.current_version(name) == 1
    result = await cli(control, "policy", "activate", "2", "-e", name, "--force")
    assert result.exit_code == 0, result.output
    assert "forced past the check" in result.output
    assert await registry.current_version(name) == 2
    # Rolling back to the better version passes the check on its own.
    result = await cli(control, "policy", "activate", "1", "-e", name)
    assert result.exit_code == 0, result.output
    assert await registry.current_version(name) == 1


async def test_without_enough_joined_examples_the_model_is_published_and_says_so(
    control: Control, redis, name: str, tmp_path: Path
) -> None:
    assert (await control.call("POST", "/v1/experiments", spec_doc(name)))[0] == 201
    await write_joined(redis, name, logged(name, 40, {"bert-1": 0.6, "bert-2": 0.4}, seed=7))
    # Decisions logged with p = 1 (pinned arms, a canary's baseline) are not evidence.
    pinned = [
        (decision(name, f"pinned-{i}", list(ARMS), [1.0, 0.0], "bert-1", dict(CONTEXT)), 1.0)
        for i in range(300)
    ]
    await write_joined(redis, name, pinned)
    model = stock_vw_model(name, tmp_path, {"bert-1": 0.3, "bert-2": 0.6})
    result = await cli(control, "policy", "publish", str(model), "-e", name)
    assert result.exit_code == 0, result.output
    assert "40 joined examples, fewer than the 100 needed to judge it" in result.output


OTHER_MODELS = {
    "vw": [
        (b'{"alpha": {"bert-1": 2}, "beta": {"bert-1": 3}}', "not a VW model: this is JSON"),
        (LinearThompsonModel().to_bytes(), "not a VW model: this is a linear_thompson model"),
        (b"\x00\x01garbage", "not a loadable VW model"),
    ],
    "thompson": [
        (LinearThompsonModel().to_bytes(), "not a Thompson sampling model"),
        (b'{"bert-1": 1}', "not a Thompson sampling model"),
    ],
    "linear_thompson": [
        (b'{"alpha": {"bert-1": 2}, "beta": {"bert-1": 3}}', "not a linear_thompson model"),
        (b"vw model bytes", "not a linear_thompson model"),
        (LinearThompsonModel().to_bytes()[:-3] + b"}xx", "a damaged linear_thompson model"),
    ],
    "static": [
        (LinearThompsonModel().to_bytes(), "a static policy model is a JSON object of weights"),
        (b'{"alpha": {"bert-1": 2}}', "a static policy model is a JSON object of weights"),
    ],
}


@pytest.mark.parametrize(
    ("learner", "model", "message"),
    [(learner, m, msg) for learner, cases in OTHER_MODELS.items() for m, msg in cases],
)
async def test_a_model_of_another_learner_is_refused_and_nothing_is_written(
    control: Control, redis, name: str, learner: str, model: bytes, message: str
) -> None:
    assert (await control.call("POST", "/v1/experiments", spec_doc(name, learner)))[0] == 201
    body = {"model": base64.b64encode(model).decode(), "force": True}
    status, answer = await control.call("POST", f"/v1/experiments/{name}/policies", body)
    assert status == 422, answer
    assert answer["error"]["type"] == "InvalidPolicy" and message in answer["error"]["message"]
    assert await PolicyRegistry(redis).versions(name) == []
    assert await redis.get(keys.policy_seq(name)) is None
    assert await redis.get(keys.policy_current(name)) is None


async def test_a_spec_with_an_unknown_learner_is_refused_with_the_field(
    control: Control, name: str
):
    status, answer = await control.call("POST", "/v1/experiments", spec_doc(name, "lints"))
    assert status == 422 and answer["error"]["field"] == "policy.learner", answer
    assert "linear_thompson" in answer["error"]["message"]
    assert (await control.call("GET", f"/v1/experiments/{name}"))[0] == 404
    assert parse_spec(spec_doc(name, "linear_thompson")).policy.learner == "linear_thompson"
