"""How fast this machine moves bytes over loopback TLS 1.3 in Python with nothing else to do.

A `put` or `get` of one large file sends every byte through Python's `ssl` on both ends, as
well as chunking, hashing, sealing and writing it. This transfer does only the TLS part, with
rPyBackup's own TLS contexts, between two processes (as client and server are), in 1 MiB
writes into a reused 1 MiB receive buffer: the most a `put` or `get` could reach here. The
bench prints it beside them, so their 700 MB/s goal can be read against what the machine
allows.
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from rpybackup_core.tls import client_context, create_identity, server_context

_BLOCK = 1024 * 1024
_SIZE = struct.Struct("!Q")
_CPU = struct.Struct("!d")
_TIMEOUT = 300.0


@dataclass(frozen=True)
class Transfer:
    seconds: float
    cpu_seconds: float  # sender and receiver together


def measure(directory: Path, size: int) -> Transfer:
    """Send ``size`` bytes from this process to a spawned receiver over loopback TLS 1.3."""
    create_identity(directory)
    spawn = multiprocessing.get_context("spawn")
    ports, port_sender = spawn.Pipe(duplex=False)
    receiver = spawn.Process(target=_receive, args=(str(directory), port_sender), daemon=True)
    receiver.start()
    try:
        if not ports.poll(_TIMEOUT):
            raise RuntimeError("the TLS receiver did not start")
        port = ports.recv()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as raw,
            client_context().wrap_socket(raw) as tls,
        ):
            transfer = _send(tls, size)
    except BaseException:
        receiver.kill()
        raise
    finally:
        receiver.join(_TIMEOUT)
    return transfer


def _send(tls: socket.socket, size: int) -> Transfer:
    block = memoryview(bytes(range(256)) * (_BLOCK // 256))
    tls.sendall(_SIZE.pack(size))
    started, cpu_started = time.perf_counter(), time.process_time()
    left = size
    while left:
        step = min(left, _BLOCK)
        tls.sendall(block[:step])
        left -= step
    receiver_cpu = _CPU.unpack(_exactly(tls, _CPU.size))[0]
    seconds = time.perf_counter() - started
    return Transfer(seconds, time.process_time() - cpu_started + receiver_cpu)


def _receive(directory: str, port_sender: Connection) -> None:
    context = server_context(Path(directory))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(_TIMEOUT)
        port_sender.send(listener.getsockname()[1])
        raw, _ = listener.accept()
        raw.settimeout(_TIMEOUT)
        with context.wrap_socket(raw, server_side=True) as tls:
            left = _SIZE.unpack(_exactly(tls, _SIZE.size))[0]
            cpu_started = time.process_time()
            buffer = memoryview(bytearray(_BLOCK))
            while left:
                received = tls.recv_into(buffer, min(left, _BLOCK))
                if not received:
                    raise RuntimeError("the TLS sender closed early")
                left -= received
            tls.sendall(_CPU.pack(time.process_time() - cpu_started))


def _exactly(tls: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = tls.recv(count - len(data))
        if not more:
            raise RuntimeError("the TLS peer closed early")
        data += more
    return data
