"""The admin API over the network: what the console calls to see, configure and prune clients.

It needs a client config enrolled with ``client add NAME --admin``; the server refuses these
requests from any other identity. Every call opens its own authenticated connection (like
BackupClient), so the API is safe to use from worker threads. Nothing here prints.
"""

from __future__ import annotations

import json
from typing import Any

from .config import ClientConfig
from .errors import ProtocolError
from .logs import LogLine
from .pruner import PrunePlan, PruneRecord, PruneResult, RetentionSetting
from .remote import RemoteRepository
from .retention import RetentionPolicy
from .status import ServerStatus


class AdminClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    def connection(self) -> RemoteRepository:
        """An authenticated connection; use it in a ``with`` block so it is closed."""
        return RemoteRepository.from_config(self.config)

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        with self.connection() as remote:
            _, payload = remote.request(op, **fields)
        try:
            doc = json.loads(payload)
        except ValueError as exc:
            raise ProtocolError(f"the server's {op} reply is not JSON") from exc
        if not isinstance(doc, dict):
            raise ProtocolError(f"the server's {op} reply is not a JSON object")
        return doc

    def status(self) -> ServerStatus:
        """Every client: enrollment, last seen, last backup and result, size, policy, prune."""
        return ServerStatus.from_json(self._call("admin_status"))

    def retention(self, client: str) -> RetentionSetting:
        return RetentionSetting.from_json(self._call("admin_retention", client=client))

    def set_retention(self, client: str, policy: RetentionPolicy | None) -> RetentionSetting:
        """Give the client its own policy; None makes it follow the server default again."""
        doc = self._call(
            "admin_set_retention", client=client, policy=policy.to_json() if policy else None
        )
        return RetentionSetting.from_json(doc)

    def prune_plan(self, client: str) -> PrunePlan:
        """What a prune would keep (with the rules that keep each snapshot) and remove."""
        return PrunePlan.from_json(self._call("admin_prune_plan", client=client))

    def prune(self, client: str, dry_run: bool = False) -> PruneResult:
        """Apply the client's policy and collect garbage (or, dry, say what that would do)."""
        return PruneResult.from_json(self._call("admin_prune", client=client, dry_run=dry_run))

    def log_lines(self, level: str = "INFO", limit: int = 200) -> list[LogLine]:
        """The server's recent log lines at ``level`` or above, oldest first."""
        doc = self._call("admin_log", level=level, limit=limit)
        return [LogLine.from_json(item) for item in doc.get("lines", [])]

    def prune_history(self, client: str | None = None, limit: int = 100) -> list[PruneRecord]:
        """Past prunes, newest first, of one client or of all."""
        doc = self._call("admin_prune_history", client=client, limit=limit)
        return [PruneRecord.from_json(item) for item in doc.get("history", [])]
