"""The ``console`` sink: results and display lines on standard output, for people."""

from __future__ import annotations

import errno
import time

from runner import hookimpl
from runner.components import Sink
from runner.display import show
from runner.schema import obj


class ConsoleSink(Sink):
    """Prints each result as its stage formats it (its ``display`` template) or as JSON, and
    the display lines of stages and dead letters. Not exactly once: after a crash, outputs
    that were in the outbox are printed again. Results are always shown; display lines at
    most ``max_lines_per_s`` a second, the rest counted, so a burst of bad input cannot
    bury them. Once standard output's reader is gone (``runner run ... | head``) it raises
    ``BrokenPipeError``, on which the runner stops cleanly; outputs it could not show stay
    in the outbox."""

    type = "console"
    shows_display = True
    config_schema = obj({
        "max_lines_per_s": {"type": "integer", "minimum": 1, "default": 50,
                            "description": "display lines (reports, dead letter notices) shown per second at most; the rest are counted"},
    }, description="Prints results and display lines for people (may repeat after a crash).")

    def __init__(self, config, context):
        super().__init__(config, context)
        self.budget = config.get("max_lines_per_s", 50)
        self.second = 0
        self.shown = 0
        self.hidden = 0
        self.closed = False  # standard output's reader is gone

    def deliver(self, outputs):
        formatters = self.context.formatters
        lines = []
        for out in outputs:
            formatter = formatters.get(out.stage)
            line = formatter(out.data()) if formatter else None
            lines.append(line or out.value.decode())
        self._show(lines)

    def flush(self):
        if self.closed:  # outputs delivered since were not shown
            raise _closed()
        counted = self._next_second()  # a burst's count is not kept for the next burst
        if counted:
            self._show(counted)
        return None

    def display(self, lines):
        """Show ``lines`` within the second's budget; a line of several (a dead letter's
        notice) is shown whole or not at all."""
        if self.closed:
            return
        shown = self._next_second()
        for line in lines:
            size = line.count("\n") + 1
            if self.shown == 0 or self.shown + size <= self.budget:  # a second's first line, however long
                shown.append(line)
                self.shown += size
            else:
                self.shown = self.budget  # nothing after a line left out, so the order holds
                self.hidden += size
        if shown:
            self._show(shown)

    def close(self):
        if self.hidden and not self.closed:
            show(self._count())

    def _next_second(self) -> list[str]:
        """In a new second: a fresh budget, and the count of the last one's hidden lines."""
        now = int(time.monotonic())
        if now == self.second:
            return []
        counted = [self._count()] if self.hidden else []
        self.second, self.shown, self.hidden = now, 0, 0
        return counted

    def _count(self) -> str:
        return f"... {self.hidden} more display lines not shown (over max_lines_per_s)"

    def _show(self, lines: list[str]) -> None:
        if self.closed or not show("\n".join(lines)):
            self.closed = True
            raise _closed()


def _closed() -> BrokenPipeError:
    return BrokenPipeError(errno.EPIPE, "standard output was closed by its reader")


@hookimpl
def runner_register_sinks():
    return [ConsoleSink]
