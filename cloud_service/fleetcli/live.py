"""Polling a resource until it finishes, redrawing its lines in place on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from cloud_service.fleetcli.client import UnreachableError

#: How long a watch keeps retrying while the server cannot be reached.
UNREACHABLE_GRACE_SECONDS = 30.0


class Live:
    """On a terminal the lines are redrawn in place; otherwise (a pipe, a log) they are
    printed again only when they change."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._drawn = 0
        self._last: list[str] | None = None

    def draw(self, lines: list[str]) -> None:
        if self.tty:
            out = [f"\x1b[{self._drawn}F"] if self._drawn else []
            out += [f"\x1b[2K{line}\n" for line in lines]
            stale = self._drawn - len(lines)
            if stale > 0:  # clear what the previous drawing left below, then come back
                out += ["\x1b[2K\n"] * stale + [f"\x1b[{stale}F"]
            self.stream.write("".join(out))
            self._drawn = len(lines)
        elif lines != self._last:
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._last = lines


def watch(fetch: Callable[[], Any], render: Callable[[Any, float], list[str]],
          finished: Callable[[Any], bool], interval: float) -> Any:
    """Fetch, draw and sleep until ``finished``; return the last state fetched. A server
    that cannot be reached for a moment (a restart) is waited for; after
    ``UNREACHABLE_GRACE_SECONDS`` the error stands."""
    live, start, down_since = Live(), time.monotonic(), None
    while True:
        try:
            item = fetch()
        except UnreachableError:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > UNREACHABLE_GRACE_SECONDS:
                raise
            time.sleep(interval)
            continue
        down_since = None
        live.draw(render(item, time.monotonic() - start))
        if finished(item):
            return item
        time.sleep(interval)
