"""TLS 1.3 identity and contexts: the server's self-signed certificate and fingerprint pinning."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import ssl
from pathlib import Path

from .durable import atomic_write_bytes
from .errors import ConfigError, FingerprintMismatch

CERT_FILE = "server.crt"
KEY_FILE = "server.key"


def create_identity(directory: Path, common_name: str = "rpybackup-server") -> str:
    """Write a new key and self-signed certificate; return the certificate fingerprint."""
    # Imported here: cryptography's X.509 layer costs ~27 ms to import, and every client
    # command (which only checks a pinned fingerprint) would pay it at start-up.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(directory / KEY_FILE, key_pem, mode=0o600)
    atomic_write_bytes(directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return format_fingerprint(
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    )


def format_fingerprint(digest: bytes) -> str:
    """Colon-separated upper-case hex, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{byte:02X}" for byte in digest)


def parse_fingerprint(text: str) -> bytes:
    cleaned = text.strip()
    if cleaned.upper().startswith("SHA256:"):
        cleaned = cleaned[7:]
    cleaned = cleaned.replace(":", "").replace(" ", "")
    try:
        digest = bytes.fromhex(cleaned)
    except ValueError as exc:
        raise ConfigError(f"fingerprint {text!r} is not hex") from exc
    if len(digest) != 32:
        raise ConfigError(f"fingerprint {text!r} is not a SHA-256 fingerprint")
    return digest


def certificate_fingerprint(cert_path: Path) -> str:
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_path.read_text(encoding="ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cert_path} is not a PEM certificate") from exc
    return format_fingerprint(hashlib.sha256(der).digest())


def server_context(directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(directory / CERT_FILE, directory / KEY_FILE)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the server TLS identity from {directory}: {exc}") from exc
    return context


def client_context() -> ssl.SSLContext:
    """No CA verification: trust comes from the pinned fingerprint, checked after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verify_pinned(sock: ssl.SSLSocket, expected: str) -> None:
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise FingerprintMismatch("the server presented no certificate")
    actual = hashlib.sha256(der).digest()
    if not hmac.compare_digest(actual, parse_fingerprint(expected)):
        raise FingerprintMismatch(
            f"server fingerprint {format_fingerprint(actual)} does not match the pinned "
            f"{expected}; refusing to connect"
        )
