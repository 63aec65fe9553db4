"""The exception hierarchy: every failure a user can see is one of these.

Each class carries a stable wire ``code`` (so a server error becomes the same exception type on
the client) and the process exit status the CLI uses for it.
"""

from __future__ import annotations

EXIT_OPERATIONAL = 1
EXIT_USAGE = 2


class RPyBackupError(Exception):
    """Root of every error that is shown to the user as one line."""

    code = "error"
    exit_code = EXIT_OPERATIONAL


class UsageError(RPyBackupError):
    code = "usage"
    exit_code = EXIT_USAGE


class ConfigError(RPyBackupError):
    code = "config"


class ProtocolError(RPyBackupError):
    """The peer broke the wire protocol; the connection is closed."""

    code = "protocol"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class ConnectionClosed(ProtocolError):
    """The peer closed the connection cleanly between frames."""

    code = "closed"


class ServerUnreachable(RPyBackupError):
    code = "unreachable"


class FingerprintMismatch(RPyBackupError):
    code = "fingerprint"


class AuthenticationFailed(RPyBackupError):
    code = "auth"


class EnrollmentFailed(RPyBackupError):
    code = "enroll"


class PermissionDenied(RPyBackupError):
    code = "denied"


class NotFound(RPyBackupError):
    code = "not_found"


class InvalidRequest(RPyBackupError):
    code = "invalid"


class ListenFailed(RPyBackupError):
    """The daemon cannot open its listening socket (port taken, address not local)."""

    code = "listen"


class RateLimited(RPyBackupError):
    """Too many failed enrollment or authentication attempts from one address."""

    code = "rate_limited"


class StorageError(RPyBackupError):
    """The server could not store or read data (disk full, I/O error)."""

    code = "storage"


class IntegrityError(RPyBackupError):
    """Stored data failed verification: a MAC, a storage hash or a file hash did not match."""

    code = "integrity"


class CryptoError(IntegrityError):
    code = "crypto"


class RestoreError(RPyBackupError):
    code = "restore"


class BackupIncomplete(RPyBackupError):
    """The snapshot was committed, but some sources could not be read."""

    code = "incomplete"

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class Cancelled(RPyBackupError):
    """The user stopped a run: a progress callback raised it, so nothing was committed."""

    code = "cancelled"


class WatchError(RPyBackupError):
    """Watch mode cannot observe the file system at all."""

    code = "watch"


class ScheduleError(RPyBackupError):
    """A schedule cannot be generated, installed or removed (cron, systemd, schtasks)."""

    code = "schedule"


class ServerError(RPyBackupError):
    """An unexpected failure inside the server; details are in the server log."""

    code = "internal"


_BY_CODE: dict[str, type[RPyBackupError]] = {}


def _register(cls: type[RPyBackupError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(RPyBackupError)


def from_wire(code: str, message: str) -> RPyBackupError:
    """Rebuild the exception a peer reported; unknown codes become a ServerError."""
    cls = _BY_CODE.get(code, ServerError)
    return cls(message)
