"""Every rich progress bar of the CLI; each is a no-op when disabled so library use stays quiet.

- ``progress_bar``: a count of ``unit`` with time left (prepare, train, infer, predict...);
- ``counting_bar``: candidates done, a rate and a second counter (``abaw ingest``);
- ``step_bar``: a few named steps, the description saying which, gone when done (the demo).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_DESCRIPTION = "[progress.description]{task.description}"


@contextmanager
def _task(enabled: bool, columns: tuple[ProgressColumn, ...] | None, description: str,
          total: int | None, *, console: Console | None = None, transient: bool = False,
          completed: int = 0, **fields: Any) -> Iterator[tuple[Progress, TaskID] | None]:
    """The one place a ``Progress`` is made: one task on it, or None when disabled.
    ``columns`` None: rich's default columns."""
    if not enabled:
        yield None
        return
    bar = Progress(*(columns or Progress.get_default_columns()), console=console,
                   transient=transient)
    with bar:
        yield bar, bar.add_task(description, total=total, completed=completed, **fields)


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None, unit: str = "items", *,
                 console: Console | None = None,
                 completed: int = 0) -> Iterator[Callable[[int], None]]:
    """``with progress_bar(enabled, "prepare train", total) as advance: advance(n)``.

    ``console``: the one a training loop also logs to, so its lines print above the bar
    instead of through it; ``completed``: where a resumed job starts.
    """
    columns = (TextColumn(_DESCRIPTION), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn())
    with _task(enabled, columns, description, total, console=console,
               completed=completed) as made:
        if made is None:
            yield lambda _n: None
            return
        bar, task = made
        yield lambda n: bar.advance(task, n)


@contextmanager
def counting_bar(enabled: bool, description: str, total: int | None, *,
                 counter: str = "ingested",
                 unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """``with counting_bar(enabled, "ingest", total) as update: update(done, counted)``: done
    of total, ``unit``/s since the start, and "``counter`` N" (done ones that were kept)."""
    columns = (TextColumn(_DESCRIPTION), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{{task.fields[rate]:,.0f}} {unit}/s"),
               TextColumn(f"{counter} {{task.fields[counted]:,}}"), TimeElapsedColumn())
    with _task(enabled, columns, description, total, rate=0.0, counted=0) as made:
        if made is None:
            yield lambda _done, _counted: None
            return
        bar, task = made
        start = time.perf_counter()

        def update(done: int, counted: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=rate, counted=counted)

        yield update


@contextmanager
def step_bar(enabled: bool, description: str, total: int, *,
             transient: bool = True) -> Iterator[Callable[[str], None]]:
    """``with step_bar(enabled, "demo data", steps) as advance: advance("video x")``: one step
    done, the description now "demo data: video x"; the bar disappears when done."""
    with _task(enabled, None, description, total, transient=transient) as made:
        if made is None:
            yield lambda _label: None
            return
        bar, task = made

        def advance(label: str) -> None:
            bar.update(task, advance=1, description=f"{description}: {label}")

        yield advance
