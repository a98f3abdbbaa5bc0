"""How an ingest looks to a person: the progress bar (with images/s) and the summary table."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class IngestProgress:
    """``with IngestProgress(enabled, total) as update: update(candidates, ingested)``."""

    def __init__(self, enabled: bool, description: str, total: int | None) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            return lambda _done, _ingested: None
        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]:,.0f} img/s"),
            TextColumn("ingested {task.fields[ingested]:,}"), TimeElapsedColumn())
        self._bar.__enter__()
        bar = self._bar
        task = bar.add_task(self.description, total=self.total, rate=0.0, ingested=0)
        start = time.perf_counter()

        def update(done: int, ingested: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=rate, ingested=ingested)

        return update

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{count} B"


def summary_table(summary: dict[str, Any]) -> Table:
    """The ingest summary as a rich table: totals, skips by reason, then one row per source."""
    where = summary.get("out_dir", "")
    state = "" if summary.get("merged", True) else f" (shard {summary.get('shard')}, not merged)"
    table = Table(title=f"unlabelled index {where}{state}")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_row("images seen", f"{summary.get('images_seen', 0):,}")
    table.add_row("ingested", f"{summary.get('ingested', 0):,}")
    table.add_row("duplicates removed", f"{summary.get('duplicates', 0):,}")
    for reason, count in sorted(summary.get("skipped_by_reason", {}).items()):
        table.add_row(f"skipped: {reason}", f"{count:,}")
    table.add_row("image bytes", _human_bytes(int(summary.get("bytes", 0))))
    table.add_row("images/s", f"{summary.get('images_per_s', 0.0):,.0f}")
    for source in summary.get("sources", []):
        table.add_row(f"source {source['id']} ({source['kind']})",
                      f"{source.get('ingested', 0):,} of {source.get('seen', 0):,}: "
                      f"{source['path']}")
    for warning in summary.get("warnings", []):
        table.add_row("[yellow]warning[/]", warning)
    return table
