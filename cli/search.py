"""CLI commands for search, bulk actions and the mirror (mixed into cli.main.Cli)."""
from __future__ import annotations


class SearchCommands:
    pass
