"""Progress for long fetches: a rich bar on a terminal, plain lines otherwise.

Plain lines matter as much as the bar: a build run from CI or a script is read later in
a log, where redrawn bars are noise. Both are safe to call from worker threads.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Task:
    def __init__(self, reporter: Reporter, label: str, total: float | None, unit: str) -> None:
        self._r = reporter
        self.label = label
        self.total = total
        self.unit = unit
        self.done_count = 0.0
        self._id = reporter._bar.add_task(label, total=total) if reporter._bar is not None else None
        if reporter._bar is None:
            reporter.line(f"{label}: started")

    def advance(self, n: float = 1) -> None:
        self.done_count += n
        if self._id is not None and self._r._bar is not None:
            self._r._bar.advance(self._id, n)

    def bytes(self, done: int, total: int) -> None:
        """A `progress(done, total)` callback in bytes, as appliance.bundle.tree calls it."""
        if self._id is not None and self._r._bar is not None:
            self._r._bar.update(self._id, completed=done, total=total)
        self.done_count, self.total = done, total

    def finish(self, note: str = "") -> None:
        if self._id is not None and self._r._bar is not None:
            self._r._bar.update(self._id, completed=self.total or self.done_count, total=self.total or 1)
            if note:
                self._r._bar.console.print(f"  {self.label}: {note}", highlight=False)
        else:
            self._r.line(f"{self.label}: done" + (f" ({note})" if note else ""))


class Reporter:
    """`with Reporter(console) as r: t = r.task("wheels", total=10); t.advance(); t.finish()`."""

    def __init__(self, console: Console, *, bar: bool | None = None) -> None:
        self.console = console
        use_bar = console.is_terminal if bar is None else bar
        self._bar: Progress | None = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            if use_bar
            else None
        )
        self._lock = threading.Lock()

    def task(self, label: str, total: float | None = None, unit: str = "files") -> Task:
        return Task(self, label, total, unit)

    def line(self, text: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(text, highlight=False, soft_wrap=True)
            else:
                self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def __enter__(self) -> Reporter:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
