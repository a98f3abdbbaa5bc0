"""How an ingest looks to a person: the summary table (its progress bar is
``abaw_kit.progress.counting_bar``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from abaw_kit.tables import count, human_bytes, kv_table, rate


def summary_table(summary: dict[str, Any]) -> Table:
    """The ingest summary as a rich table: totals, skips by reason, then one row per source."""
    where = summary.get("out_dir", "")
    state = "" if summary.get("merged", True) else f" (shard {summary.get('shard')}, not merged)"
    rows: list[tuple[str, str]] = [
        ("images seen", count(summary.get("images_seen", 0))),
        ("ingested", count(summary.get("ingested", 0))),
        ("duplicates removed", count(summary.get("duplicates", 0))),
        *((f"skipped: {reason}", count(n))
          for reason, n in sorted(summary.get("skipped_by_reason", {}).items())),
        ("image bytes", human_bytes(int(summary.get("bytes", 0)))),
        ("images/s", rate(summary.get("images_per_s", 0.0))),
        *((f"source {source['id']} ({source['kind']})",
           f"{count(source.get('ingested', 0))} of {count(source.get('seen', 0))}: "
           f"{source['path']}") for source in summary.get("sources", [])),
        *(("[yellow]warning[/]", warning) for warning in summary.get("warnings", [])),
    ]
    return kv_table(f"unlabelled index {where}{state}", rows, headers=("", "value"),
                    show_header=True, value_justify="right")
