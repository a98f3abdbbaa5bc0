"""One rich progress bar for long CLI work; a no-op when disabled so library use stays quiet."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class progress_bar:  # noqa: N801 - used like a function in `with progress_bar(...) as advance`
    """``with progress_bar(enabled, "prepare train", total) as advance: advance(n)``.

    ``console``: the one a training loop also logs to, so its lines print above the bar
    instead of through it; ``completed``: where a resumed job starts.
    """

    def __init__(self, enabled: bool, description: str, total: int | None,
                 unit: str = "items", *, console: Console | None = None,
                 completed: int = 0) -> None:
        self.enabled, self.description, self.total, self.unit = enabled, description, total, unit
        self.console, self.completed = console, completed
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn(f"{self.unit}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(), console=self.console)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total, completed=self.completed)
        bar = self._bar
        return lambda n: bar.advance(task, n)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
