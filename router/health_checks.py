"""Active checks of ejected arms that have a `health_path`: a GET instead of a client's request.

Every `interval_s` the task asks `ArmHealth.due_checks()` for ejected arms whose
cool-down has passed and GETs `{url}{health_path}` on each with the arm's connect
timeout and a short response timeout: a 2xx re-admits the arm, anything else ejects
it for twice as long. Arms without a `health_path` keep being probed by one request.
"""

from __future__ import annotations

import asyncio
import logging

from banditgate.errors import BackendError
from router.arm_health import ArmHealth
from router.backends import Backend
from router.runtime import Runtime

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self,
        *,
        health: ArmHealth,
        runtime: Runtime,
        backend: Backend,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
    ) -> None:
        self.health = health
        self.runtime = runtime
        self.backend = backend
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    def refresh(self) -> None:
        """Which arms are actively checked, from the served specs."""
        self.health.checked = {
            (name, arm.name)
            for name, state in self.runtime.experiments.items()
            for arm in state.spec.arms
            if arm.health_path
        }

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.refresh()
            due = self.health.due_checks() if self.health else []
            if due:
                await asyncio.gather(*(self.check(key) for key in due))

    async def check(self, key: tuple[str, str]) -> bool:
        state = self.runtime.experiments.get(key[0])
        arm = state.arms.get(key[1]) if state is not None else None
        if arm is None or not arm.health_path:
            return False
        url = f"{arm.url}{arm.health_path}"
        try:
            response = await self.backend.send(
                arm, url, b"", {}, method="GET", timeout_s=self.timeout_s
            )
        except BackendError as exc:
            log.info("health check of arm %s of %s failed: %s", key[1], key[0], exc.message)
            self.health.failure(key)
            return False
        if 200 <= response.status < 300:
            self.health.success(key)
            return True
        self.health.failure(key)
        return False
