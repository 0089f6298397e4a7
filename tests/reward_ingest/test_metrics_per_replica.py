"""Each webhook replica counts what it took; the counts summed over replicas are the total."""

from __future__ import annotations

import re

import aiohttp


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name}_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_two_webhooks_count_their_own_rewards_and_sum_to_the_total(
    ingest_url, experiment, name
):
    await experiment(min=0, max=1)
    first, second = await ingest_url(), await ingest_url()
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            base = first if i % 3 else second  # 20 to the first, 10 to the second
            async with http.post(
                f"{base}/v1/rewards", json={"event_id": f"ev-{i}", "value": 1, "experiment": name}
            ) as response:
                assert response.status == 202
        # One batch to the second: 4 good, 1 out of range.
        batch = [{"event_id": f"b-{i}", "value": 1, "experiment": name} for i in range(4)]
        batch.append({"event_id": "b-bad", "value": 7, "experiment": name})
        async with http.post(f"{second}/v1/rewards", json={"rewards": batch}) as response:
            assert response.status == 202
        texts = []
        for base in (first, second):
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                texts.append(await response.text())
    accepted = [_value(text, "banditgate_ingest_rewards_accepted") for text in texts]
    rejected = [_value(text, "banditgate_ingest_rewards_rejected") for text in texts]
    assert accepted == [20.0, 14.0] and sum(accepted) == 34
    assert rejected == [0.0, 1.0]
    # Only this process's counters: no experiment gauges (those come from the control plane).
    assert all("banditgate_requests" not in text for text in texts)
