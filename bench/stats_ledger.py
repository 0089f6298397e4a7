"""What the control plane's statistics cost on a large experiment.

Writes N decisions (router-sized batches of 2000) and N/3 joined examples of a
two-arm A/B test into Redis, then times: the first read of both streams into a
fresh ledger (a control-plane restart), an incremental refresh after 10 000 more
decisions (a dashboard tick under load), the stats summary, the time series,
and the /metrics rendering.

    BANDITGATE_REDIS_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/stats_ledger.py
    .venv/bin/python bench/stats_ledger.py --decisions 200000   # embedded Redis (URL unset)

The experiment's keys are deleted at the end; nothing else in the database is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from banditgate import keys
from banditgate.redis import EmbeddedRedis, connect
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from experiments.ledger import StatsBook, join_counters
from experiments.metrics import ExperimentMetrics, render
from experiments.stats import srm, summarize, timeseries

NAME = "bench-stats-ledger"


def batch(
    rng: np.random.Generator, start_ms: int, n: int, spacing_ms: float
) -> list[dict[str, object]]:
    chosen = rng.random(n) < 0.5
    return [
        {
            "event_id": f"{start_ms}-{i}",
            "experiment": NAME,
            "ts_ms": int(start_ms + i * spacing_ms),
            "policy_version": 0,
            "mode": "ab",
            "context": {"h.x-segment": "gold"},
            "arms": ["a", "b"],
            "pmf": [0.5, 0.5],
            "chosen": "b" if c else "a",
            "forced": False,
            "status": 200,
            "latency_ms": 12.5,
        }
        for i, c in enumerate(chosen)
    ]


async def write(redis: object, n: int, seed: int, start_ms: int, span_ms: int) -> None:
    rng = np.random.default_rng(seed)
    spacing = span_ms / n
    joined_every = 3
    for offset in range(0, n, 2000):
        rows = batch(rng, int(start_ms + offset * spacing), min(2000, n - offset), spacing)
        async with redis.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            pipe.xadd(keys.decisions(NAME), {"n": len(rows), "b": orjson.dumps(rows)})
            for d in rows[::joined_every]:
                reward = float(rng.random() < (0.12 if d["chosen"] == "b" else 0.10))
                pipe.xadd(
                    keys.joined(NAME),
                    {
                        "d": orjson.dumps(d),
                        "r": repr(reward),
                        "rw": b"1" if reward else b"0",
                        "n": 1,
                        "jt": 0,
                    },
                )
            await pipe.execute()


async def main(decisions: int) -> None:
    url = os.environ.get("BANDITGATE_REDIS_URL")
    embedded = None
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    redis = connect(url)
    try:
        store = ExperimentStore(redis)
        spec = parse_spec(
            {
                "name": NAME,
                "mode": "ab",
                "arms": [{"name": "a", "url": "http://x"}, {"name": "b", "url": "http://y"}],
            }
        )
        await store.put(spec)
        now = int(time.time() * 1000)
        started = time.perf_counter()
        await write(redis, decisions, 1, now - 6 * 3600 * 1000, 6 * 3600 * 1000)
        print(
            f"wrote {decisions:,} decisions and {decisions // 3:,} joined examples "
            f"in {time.perf_counter() - started:.1f} s"
        )

        book = StatsBook(redis)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stalls: list[float] = []
        beating = asyncio.Event()

        async def heartbeat() -> None:
            # What a router sharing this event loop would feel: how late a 1 ms sleep wakes.
            beating.set()
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls.append(time.perf_counter() - before - 0.001)

        beat = asyncio.create_task(heartbeat())
        await beating.wait()
        started = time.perf_counter()
        async with book.open(spec) as ledger:
            first = time.perf_counter() - started
        beat.cancel()
        lags = np.asarray(stalls) * 1000
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"event loop during it: wake-up lag p50 {np.percentile(lags, 50):.2f} ms, "
            f"p99 {np.percentile(lags, 99):.2f} ms, max {lags.max():.1f} ms; "
            f"{int((lags > 50).sum())} of {len(lags)} wake-ups over 50 ms"
        )
        print(
            f"first read into a fresh ledger: {first:.2f} s "
            f"({decisions / first:,.0f} decisions/s); "
            f"peak RSS +{(rss_after - rss_before) / 1024:.0f} MB"
        )

        await write(redis, 10_000, 2, int(time.time() * 1000) - 10_000, 10_000)
        started = time.perf_counter()
        async with book.open(spec) as ledger:
            pass
        print(
            "incremental refresh after 10,000 more decisions: "
            f"{1000 * (time.perf_counter() - started):.0f} ms"
        )

        started = time.perf_counter()
        async with book.open(spec):
            pass
        print(f"refresh with nothing new: {1000 * (time.perf_counter() - started):.1f} ms")

        counters = await join_counters(redis, NAME)
        for label, fn in (
            ("stats, all data", lambda: summarize(spec, ledger, override=None, counters=counters)),
            (
                "stats, last hour",
                lambda: summarize(spec, ledger, override=None, counters=counters, window_s=3600),
            ),
            ("time series, 6 h at 3 min", lambda: timeseries(spec, ledger, window_s=6 * 3600)),
            (
                "/metrics rendering",
                lambda: render(
                    [
                        ExperimentMetrics(
                            NAME,
                            "ab",
                            "running",
                            None,
                            dict(ledger.lifetime),
                            counters,
                            srm=srm(spec, None, ledger.merged()),
                        )
                    ]
                ),
            ),
        ):
            started = time.perf_counter()
            for _ in range(5):
                fn()
            print(f"{label}: {1000 * (time.perf_counter() - started) / 5:.1f} ms")
        print(f"buckets held: {len(ledger.fine)} fine, {len(ledger.coarse)} coarse")
    finally:
        await store.delete(NAME)
        await redis.aclose()
        if embedded is not None:
            embedded.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().decisions))
