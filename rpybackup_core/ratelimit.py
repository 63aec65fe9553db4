"""Failed-attempt limiting per source address: bad enrollment codes and bad credentials.

Secrets are long and random, so guessing is hopeless anyway; the limit keeps a guesser from
loading the server and its log, and makes every such attempt visible. An address that fails
``max_failures`` times within ``window`` seconds is refused (before its secret is even looked
at) until its oldest failure in the window has aged out. A success does not clear the count:
a client with one valid credential must not be able to reset its budget for guessing another.

IPv6 addresses count per /64, the block one host usually controls. The table of addresses is
bounded; when it is full the address seen least recently is forgotten.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from .errors import RateLimited

log = logging.getLogger(__name__)

MAX_FAILURES = 10
WINDOW = 60.0
MAX_TRACKED = 65536


def source_key(address: str) -> str:
    """The unit an address is limited as: itself for IPv4, its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AttemptLimiter:
    """Shared by every connection of one server; thread-safe."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def check(self, address: str, what: str) -> None:
        """Raise RateLimited if this address has used up its failures for now."""
        key = source_key(address)
        now = self._clock()
        with self._lock:
            failures = self._recent(key, now)
            if failures is None or len(failures) < self.max_failures:
                return
            wait = failures[0] + self.window - now
        log.warning("%s: %s refused, too many failed attempts from %s", address, what, key)
        raise RateLimited(f"too many failed attempts from {address}; try again in {wait:.0f}s")

    def failure(self, address: str, what: str) -> None:
        """Count a failed attempt and log it."""
        key = source_key(address)
        now = self._clock()
        with self._lock:
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.max_failures)
                while len(self._failures) > self.max_tracked:
                    self._failures.popitem(last=False)
            self._failures.move_to_end(key)
            failures.append(now)
            count = len(failures)
        log.warning(
            "%s: %s (%d of %d allowed failures in %.0fs)",
            address,
            what,
            count,
            self.max_failures,
            self.window,
        )

    def tracked(self) -> int:
        with self._lock:
            return len(self._failures)
