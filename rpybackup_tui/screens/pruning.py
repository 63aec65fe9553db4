"""Pruning: the server's retention policy per client, a dry-run plan, a confirmed prune, history."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from .base import AreaScreen


class PruneScreen(AreaScreen):
    AREA = "prune"

    def compose_body(self) -> ComposeResult:
        yield Static("Pruning", classes="area-title")
        yield Static("needs the server's admin API", id="prune-status", markup=False)
