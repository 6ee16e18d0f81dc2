"""Printing a dict of metrics as a two-column table, for the evaluate commands."""

from __future__ import annotations


def print_table(rows: dict[str, float], title: str) -> None:
    width = max(len(k) for k in rows)
    print(f"\n{title}\n" + "-" * (width + 16))
    for key, value in rows.items():
        print(
            f"{key:<{width}}  {value:>12.4f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12}"
        )
