"""How long the monitoring worker's drift check takes over captured records, on one core.

    python bench/monitor.py [--records 1000000]

Writes `--records` capture records (the router's record shape: a JSON review request
and its JSON answer) for one arm, a baseline from 20,000 training bodies, then times
`check_arm` (read, decode, profile, compare) over them in this one process.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.check import baseline_from_file, check_arm  # noqa: E402
from monitor.profile import Thresholds  # noqa: E402

WORDS = ["battery", "screen", "great", "poor", "fast", "slow", "camera", "price", "love", "bad"]


def body(rng: random.Random) -> dict[str, object]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
    return {"features": [text], "user": {"tier": rng.choice(["free", "pro", "team"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(7)
    root = Path(tempfile.mkdtemp())
    training = root / "train.jsonl"
    training.write_bytes(b"".join(orjson.dumps(body(rng)) + b"\n" for _ in range(20_000)))
    baseline = baseline_from_file(training)
    now = time.time()
    hour = datetime.fromtimestamp(now, UTC).strftime("%Y/%m/%d/%H")
    folder = root / "capture" / "bench" / "a" / hour
    folder.mkdir(parents=True)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    started = time.perf_counter()
    with (folder / "bench.jsonl").open("wb") as out:
        for i in range(args.records):
            record = {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "application/json",
                        "mode": "INPUT",
                        "data": orjson.dumps(body(rng)).decode(),
                        "encoding": "JSON",
                    },
                    "endpointOutput": {
                        "observedContentType": "application/json",
                        "mode": "OUTPUT",
                        "data": f'{{"predicted_label": {rng.randint(1, 5)}}}',
                        "encoding": "JSON",
                    },
                },
                "eventMetadata": {"eventId": str(i), "inferenceId": str(i), "inferenceTime": stamp},
                "eventVersion": "0",
                "banditgate": {"experiment": "bench", "arm": "a"},
            }
            out.write(orjson.dumps(record) + b"\n")
    written = time.perf_counter() - started
    size = (folder / "bench.jsonl").stat().st_size
    started = time.perf_counter()
    cpu = time.process_time()
    result = check_arm(
        root / "capture", "bench", "a", baseline, window_s=3600, thresholds=Thresholds(), now=now
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    print(f"wrote {args.records:,} records ({size / 1e6:.0f} MB) in {written:.1f} s")
    print(
        f"check_arm over {result.records:,} records: {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"({cpu / max(result.records, 1) * 1e6:.1f} us CPU per record); "
        f"{len(result.violations)} violations, {len(result.distances)} features compared"
    )


if __name__ == "__main__":
    main()
