"""`banditgate import personalizer` and `personalizer-config`, then `train --from` warm-starts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import yaml

from banditgate.featurize import action_lines
from banditgate.policy import ActionSet, build_policy
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from tests.trainer.test_warmstart import invoke

TAGS = ["NewsArticle", "SportsArticle"]
FEATURES = {"NewsArticle": {"type": "News"}, "SportsArticle": {"type": "Sports"}}


def personalizer_log(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The hosted service's export: gold users like sports, free users news; logged 50/50."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        tier = rng.choice(["gold", "free"])
        chosen = rng.randrange(2)
        good = (TAGS[chosen] == "SportsArticle") == (tier == "gold")
        reward = 1.0 if rng.random() < (0.8 if good else 0.2) else 0.0
        other = 1 - chosen
        line: dict[str, Any] = {
            "_label_cost": -reward,
            "_label_probability": 0.5,
            "_label_Action": chosen + 1,
            "_labelIndex": chosen,
            "Timestamp": f"2026-03-0{1 + i % 2}T10:{i % 60:02d}:00.1234567Z",
            "Version": "1",
            "EventId": f"ev-{i}",
            "a": [chosen + 1, other + 1],
            "c": {
                "User": {"tier": tier},
                "_multi": [{"_tag": tag, "Article": FEATURES[tag]} for tag in TAGS],
            },
            "p": [0.5, 0.5],
        }
        if reward:
            line["o"] = [{"v": reward, "EventId": f"ev-{i}", "ActionTaken": False}]
        lines.append(line)
    lines.append({**lines[0], "EventId": "never-activated", "_skipLearn": True})
    return lines


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


async def test_import_logs_and_config_then_warm_start(redis, control, name, tmp_path):
    logs = write_lines(tmp_path / "personalizer.json", personalizer_log(2000))
    mapping = tmp_path / "map.json"
    mapping.write_bytes(orjson.dumps({"NewsArticle": "news"}))
    (tmp_path / "service.json").write_bytes(
        orjson.dumps(
            {
                "rewardWaitTime": "PT10M",
                "defaultReward": 0.0,
                "rewardAggregation": "earliest",
                "explorationPercentage": 0.2,
                "modelExportFrequency": "PT1M",
                "logRetentionDays": 90,
                "lastConfigurationEditDate": "2026-01-01T00:00:00",
            }
        )
    )
    (tmp_path / "policy.json").write_bytes(
        orjson.dumps(
            {
                "name": "app1",
                "arguments": "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 "
                "--cb_type mtr -q ::",
            }
        )
    )
    spec_file = tmp_path / "spec.yaml"
    converted = await invoke(
        None,
        "import",
        "personalizer-config",
        "--name",
        name,
        "--service",
        str(tmp_path / "service.json"),
        "--policy",
        str(tmp_path / "policy.json"),
        "--logs",
        str(logs),
        "--map",
        str(mapping),
        "-o",
        str(spec_file),
    )
    assert converted.exit_code == 0, converted.output
    spec = parse_spec(yaml.safe_load(spec_file.read_text()))
    assert [arm.name for arm in spec.arms] == ["news", "SportsArticle"]
    assert spec.rank_only
    assert spec.reward.window_s == 600
    assert spec.policy.exploration.epsilon == 0.2
    assert spec.policy.learning_rate == 0.001
    assert spec.policy.update.every_s == 60
    await ExperimentStore(redis).put(spec)

    out = tmp_path / "export"
    imported = await invoke(
        None,
        "import",
        "personalizer",
        str(logs),
        "-e",
        name,
        "--map",
        str(mapping),
        "--out",
        str(out),
    )
    assert imported.exit_code == 0, imported.output
    assert "2000" in imported.output and "news, SportsArticle" in imported.output
    table = ds.dataset(str(out), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 2000
    assert sorted({str(d) for d in table.column("date").to_pylist()}) == [
        "2026-03-01",
        "2026-03-02",
    ]
    first = table.slice(0, 1).to_pylist()[0]
    assert first["arms"] == ["news", "SportsArticle"]
    assert first["pmf"] == [0.5, 0.5]
    assert orjson.loads(first["context"]) == {
        "User.tier": personalizer_log(1)[0]["c"]["User"]["tier"]
    }
    assert orjson.loads(first["action_features"]) == [
        {"Article.type": "News"},
        {"Article.type": "Sports"},
    ]
    dsjson = list((out / "_dsjson").rglob("*.json"))
    assert sum(len(p.read_bytes().splitlines()) for p in dsjson) == 2000

    trained = await invoke(control, "train", "--from", str(out), "--experiment", name)
    assert trained.exit_code == 0, trained.output
    registry = PolicyRegistry(redis)
    (version,) = await registry.versions(name)
    assert version.n_examples == 2000
    assert version.ope["candidate"]["dr"]["value"] > version.ope["logging_policy"]["dr"]["value"]
    policy = build_policy(spec, await registry.model(name, version.version), version.version)
    names = ["news", "SportsArticle"]
    features = [{"Article.type": "News"}, {"Article.type": "Sports"}]
    actions = ActionSet(tuple(names), tuple(action_lines(names, features)))
    assert policy.probabilities({"User.tier": "gold"}, actions)[1] > 0.7
    assert policy.probabilities({"User.tier": "free"}, actions)[0] > 0.7


async def test_a_bad_line_refuses_the_import_and_writes_nothing(tmp_path, name):
    lines = personalizer_log(5)
    lines[3] = {**lines[3], "_label_probability": 0.9}
    logs = write_lines(tmp_path / "bad.json", lines)
    out = tmp_path / "export"
    result = await invoke(None, "import", "personalizer", str(logs), "-e", name, "--out", str(out))
    assert result.exit_code != 0
    assert "bad.json line 4" in result.output
    assert "_label_probability 0.9 differs" in result.output
    assert not out.exists()
