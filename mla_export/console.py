"""The rich console used for tables: at least 120 columns when output is not a terminal (CI logs)."""

from __future__ import annotations


def make_console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    return console
