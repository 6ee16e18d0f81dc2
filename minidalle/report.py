"""The evaluate commands' report: a two-column table on the terminal and the same metrics as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def report_metrics(metrics: dict[str, float], title: str, path: Path) -> None:
    """Print ``metrics`` as a table under ``title`` and write them to ``path`` as JSON."""
    width = max(len(k) for k in metrics)
    print(f"\n{title}\n" + "-" * (width + 16))
    for key, value in metrics.items():
        print(
            f"{key:<{width}}  {value:>12.4f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12}"
        )
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\nwrote {path}")
