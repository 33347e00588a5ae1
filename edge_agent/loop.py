"""The agent as one loop of periodic operations (after WALinuxAgent's periodic_operation):
each operation runs when due; a failure is logged at a limited rate and never stops the
loop; network errors push the next run back with exponential backoff and jitter."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_agent.client import Backoff
from edge_agent.errors import AgentError, NetworkError

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Log the same (operation, message) at most once per ``interval`` seconds, with the
    number of repeats that were held back."""

    def __init__(self, interval: float = 300.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.interval, self.clock = interval, clock
        self.last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, op: str, message: str, exc_info: bool = False) -> bool:
        key, now = (op, message), self.clock()
        at, held = self.last.get(key, (float("-inf"), 0))
        if now - at < self.interval:
            self.last[key] = (at, held + 1)
            return False
        more = f" (repeated {held} more times)" if held else ""
        log.warning("%s failed: %s%s", op, message, more, exc_info=exc_info,
                    extra={"operation": op})
        self.last[key] = (now, 0)
        return True


class PeriodicOperation:
    def __init__(self, name: str, fn: Callable[[], object], period: float,
                 backoff: Backoff, errors: RateLimitedLog) -> None:
        self.name, self.fn, self.period = name, fn, period
        self.backoff, self.errors = backoff, errors
        self.next_run = 0.0
        self.failures = 0

    def run(self, now: float) -> None:
        try:
            self.fn()
        except NetworkError as e:
            self.failures += 1
            delay = max(self.backoff.next_delay(), 0.05)
            self.errors(self.name, f"{e}; retrying in about {delay:.0f} s")
            self.next_run = now + delay
            return
        except AgentError as e:
            self.failures += 1
            self.errors(self.name, str(e))
        except Exception as e:  # noqa: BLE001 - the loop must survive anything
            self.failures += 1
            self.errors(self.name, f"{type(e).__name__}: {e}", exc_info=True)
        else:
            self.backoff.reset()
        self.next_run = now + self.period


class Loop:
    def __init__(self, operations: list[PeriodicOperation],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.operations, self.clock = operations, clock
        self.stop_event = threading.Event()

    def run_once(self) -> float:
        """Run every due operation; return seconds until the next is due."""
        for op in self.operations:
            if self.stop_event.is_set():
                break
            now = self.clock()
            if now >= op.next_run:
                op.run(now)
        now = self.clock()
        return max(0.0, min(op.next_run for op in self.operations) - now)

    def run_forever(self) -> None:
        while not self.stop_event.is_set():
            self.stop_event.wait(min(self.run_once(), 1.0))

    def stop(self) -> None:
        self.stop_event.set()
