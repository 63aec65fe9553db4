"""The server daemon: a TLS 1.3 listener with one thread per connection from a bounded pool."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable

from .config import ServerConfig
from .errors import ListenFailed, ProtocolError, RPyBackupError
from .logs import RecentLog
from .protocol import FramedSocket
from .pruner import Pruner, PruneScheduler, PruneSettings
from .ratelimit import AttemptLimiter, source_key
from .repository import Repository
from .session import Session
from .storage import open_backend
from .tls import server_context

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 20.0
# How long a connection that finds every slot taken waits for one before it is refused.
SLOT_WAIT = 5.0


class BackupServer:
    def __init__(self, config: ServerConfig, repo: Repository | None = None) -> None:
        self.config = config
        self.repo = repo or Repository(config.data_dir, open_backend(config))
        # Pins and open packs belong to live sessions; what a previous daemon left is stale.
        self.repo.clear_pins()
        if discarded := self.repo.discard_temp_packs():
            log.info("discarded %d unfinished pack(s) left by an earlier run", discarded)
        self.prune_settings = PruneSettings.from_config(config)
        self.limiter = AttemptLimiter()
        self.recent_log = RecentLog()
        self.context = server_context(config.tls_dir)
        family = socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET
        try:
            self._listener = socket.create_server(
                (config.listen_host, config.listen_port), family=family, backlog=128
            )
        except OSError as exc:
            raise ListenFailed(f"cannot listen on {config.listen}: {exc.strerror or exc}") from exc
        self._listener.settimeout(0.5)
        # Slots held and connections waiting for one, in total and per address (an IPv6 /64):
        # one address may hold a quarter of the slots, so a single host's half-open handshakes
        # or idle sessions cannot lock every other client out.
        self._admission = threading.Condition()
        self._per_source_cap = max(1, config.max_connections // 4)
        self._held = 0
        self._held_by: Counter[str] = Counter()
        self._waiting = 0
        self._waiting_by: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._scheduler = PruneScheduler(
            Pruner(self.repo, self.prune_settings), config.prune_interval, self._stopping
        )
        self._stopped = threading.Event()
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        # Every rpybackup_core logger reports here while serving, for the admin_log request.
        logging.getLogger("rpybackup_core").addHandler(self.recent_log)
        log.info("listening on %s:%d (TLS 1.3)", *self.address)
        self._scheduler.start()
        try:
            while not self._stopping.is_set():
                try:
                    raw, peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    raise
                self._admit(raw, f"{peer[0]}:{peer[1]}")
        finally:
            self._drain()
            logging.getLogger("rpybackup_core").removeHandler(self.recent_log)
            self._stopped.set()

    def _admit(self, raw: socket.socket, peer: str) -> None:
        """Serve ``raw`` now if a slot is free; otherwise let it wait a little for one.

        A client that reconnects the moment it closed (the next command of a script, a run's
        helper) would otherwise be refused while the server is still ending its last session.
        At most as many connections wait as there are slots, a quarter of them per address.
        """
        source = _source(peer)
        with self._admission:
            if self._has_room(source):
                self._hold(source, raw)
                self._start(self._handle, raw, peer)
                return
            if (
                self._waiting >= self.config.max_connections
                or self._waiting_by[source] >= self._per_source_cap
            ):
                self._refuse(raw, peer, source)
                return
            self._waiting += 1
            self._waiting_by[source] += 1
        log.info("%s waits for a connection slot", peer)
        self._start(self._wait_for_slot, raw, peer)

    def _start(
        self, target: Callable[[socket.socket, str], None], raw: socket.socket, peer: str
    ) -> None:
        thread = threading.Thread(target=target, args=(raw, peer), name=f"conn-{peer}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _wait_for_slot(self, raw: socket.socket, peer: str) -> None:
        source = _source(peer)
        with self._admission:
            self._admission.wait_for(
                lambda: self._stopping.is_set() or self._has_room(source), SLOT_WAIT
            )
            self._waiting -= 1
            self._forget(self._waiting_by, source)
            admitted = not self._stopping.is_set() and self._has_room(source)
            if admitted:
                self._hold(source, raw)
            elif not self._stopping.is_set():
                self._refuse(raw, peer, source)
        if admitted:
            self._handle(raw, peer)
            return
        raw.close()
        self._threads.discard(threading.current_thread())

    def _has_room(self, source: str) -> bool:
        return (
            self._held < self.config.max_connections
            and self._held_by[source] < self._per_source_cap
        )

    def _hold(self, source: str, raw: socket.socket) -> None:
        self._held += 1
        self._held_by[source] += 1
        with self._active_lock:
            self._active.add(raw)

    def _refuse(self, raw: socket.socket, peer: str, source: str) -> None:
        if self._held >= self.config.max_connections:
            log.warning(
                "refusing %s: all %d connection slots busy", peer, self.config.max_connections
            )
        else:
            log.warning(
                "refusing %s: %s already holds %d connections", peer, source, self._per_source_cap
            )
        raw.close()

    @staticmethod
    def _forget(counts: Counter[str], source: str) -> None:
        counts[source] -= 1
        if not counts[source]:
            del counts[source]

    def _handle(self, raw: socket.socket, peer: str) -> None:
        tls: ssl.SSLSocket | None = None
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            tls = self.context.wrap_socket(raw, server_side=True)
            tls.settimeout(self.config.idle_timeout)
            Session(
                self.repo,
                FramedSocket(tls),
                peer,
                self.config.pack_size,
                self.prune_settings,
                self.limiter,
                self.recent_log,
            ).run()
        except ProtocolError as exc:
            log.warning("%s: protocol error, closing: %s", peer, exc)
        except RPyBackupError as exc:
            log.warning("%s: %s", peer, exc)
        except (ssl.SSLError, OSError) as exc:
            log.info("%s: connection ended: %s", peer, exc)
        except Exception:
            log.exception("%s: unexpected failure in connection handler", peer)
        finally:
            with contextlib.suppress(OSError):
                (tls or raw).close()
            with self._active_lock:
                self._active.discard(raw)
            with self._admission:
                self._held -= 1
                self._forget(self._held_by, _source(peer))
                self._admission.notify_all()
            self._threads.discard(threading.current_thread())

    def stop(self) -> None:
        """Ask the accept loop to end; safe from a signal handler."""
        self._stopping.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting, end every connection (open packs are sealed), wait for the loop."""
        self.stop()
        self._stopped.wait(timeout)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._active_lock:
            active = list(self._active)
        for raw in active:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        with self._admission:
            self._admission.notify_all()
        for thread in list(self._threads):
            thread.join(timeout=10)
        # A scheduled prune in progress finishes its client; the next one is not started.
        self._scheduler.join()
        log.info("server stopped")


def _source(peer: str) -> str:
    """The address a connection counts against ("host:port" -> its host's source key)."""
    return source_key(peer.rsplit(":", 1)[0])
