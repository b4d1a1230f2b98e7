"""CLI commands for queue and job management (mixed into cli.main.Cli)."""
from __future__ import annotations


class ManageCommands:
    pass
