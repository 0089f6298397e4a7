"""One decision per client request, however many times the client sends it.

SDKs retry: botocore resends the same request (same `amz-sdk-invocation-id`, same
`X-Amzn-SageMaker-Inference-Id` if the caller set one) after a retryable status or a
dropped connection. A retry must get the decision already made (same event id, same
arm) and must not be logged a second time, or the log holds decisions no client saw
and off-policy estimates count one request several times.

Held in this process's memory for `window_s`: a retry reaching another router
replica behind a load balancer gets a fresh decision (the retry-header key stays
unique per request, so nothing else breaks).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

# Headers that name one client request across its retries, strongest first.
SDK_INVOCATION_ID = "amz-sdk-invocation-id"


def replay_key(
    experiment: str, headers: Mapping[str, str], given_event_id: str | None
) -> str | None:
    """The request's identity across retries: the client's event id, else the SDK's."""
    if given_event_id is not None:
        return f"{experiment}\x00e\x00{given_event_id}"
    sdk = headers.get(SDK_INVOCATION_ID)
    if sdk:
        return f"{experiment}\x00s\x00{sdk}"
    return None


class Replays(Generic[T]):
    """Key -> first value, for `window_s` seconds, at most `max_entries` (oldest dropped)."""

    def __init__(self, *, window_s: float = 120.0, max_entries: int = 100_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.window_s:
            return None
        return entry[1]

    def put(self, key: str, value: T) -> None:
        now = time.monotonic()
        entries = self._entries
        entries[key] = (now, value)
        entries.move_to_end(key)
        # Insertion order is time order: expire from the front.
        while entries:
            first = next(iter(entries.values()))
            if len(entries) > self.max_entries or now - first[0] > self.window_s:
                entries.popitem(last=False)
            else:
                break
