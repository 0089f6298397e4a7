"""Cancel a request's backend call when its client goes away.

Watching costs a task, so it starts only once a request has run `after_s`: a fast
request pays for one timer, a slow one (a hung backend) is cancelled soon after its
client disconnects instead of holding a backend connection until its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from banditgate.tasks import TaskGroup

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class DisconnectWatch:
    def __init__(self, receive: Receive, *, after_s: float, tasks: TaskGroup) -> None:
        self.receive = receive
        self.tasks = tasks
        self.disconnected = False
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start)

    def _start(self) -> None:
        self._watcher = self.tasks.spawn(self._watch(), "disconnect-watch")

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self._task is not None:
                    self._task.cancel()
                return

    def close(self) -> None:
        self._timer.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if it was ours."""
        if not self.disconnected or self._task is None:
            return False
        self._task.uncancel()
        return True
