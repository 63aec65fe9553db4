"""What every area shares: the area bar, the footer, and failure reporting for its workers."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar, cast

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from ..data.backend import Backend
from ..widgets.area_bar import AreaBar

if TYPE_CHECKING:
    from ..app import ConsoleApp


class AreaScreen(Screen[None]):
    AREA: ClassVar[str]

    @property
    def console(self) -> ConsoleApp:
        return cast("ConsoleApp", self.app)

    @property
    def backend(self) -> Backend:
        return self.console.backend

    def compose(self) -> ComposeResult:
        yield AreaBar(self.AREA, self.console.identity)
        yield from self.compose_body()
        yield Footer()

    @abstractmethod
    def compose_body(self) -> ComposeResult:
        """The area's own widgets, between the area bar and the footer."""

    @on(Worker.StateChanged)
    def worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker: Worker[object] = event.worker
        if event.state == WorkerState.ERROR:
            message = self.console.report_failure(worker)
            self.worker_failed(worker.group, message)
        elif event.state == WorkerState.SUCCESS:
            self.console.clear_failure(worker.group)

    def worker_failed(self, group: str, message: str) -> None:
        """Let an area show a failure in place too (the app has already notified)."""
