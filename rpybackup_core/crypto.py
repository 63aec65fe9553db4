"""Client-side cryptography: chunk ids, compression + sealing, and passphrase key wrapping.

* A chunk id is keyed BLAKE3 of the plaintext, so the server never learns plaintext hashes.
* A sealed blob is ``version | nonce | AES-256-GCM(compression flag | data)`` with the chunk id as
  associated data: a blob moved to another id fails to open.
* The storage hash is plain BLAKE3 of the sealed bytes; the server computes it as it stores a
  blob and checks it on every read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from zstandard.backend_cffi import ffi as zstd_ffi
from zstandard.backend_cffi import lib as zstd_lib

from .errors import ConfigError, CryptoError

ID_SIZE = 32
SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = 1 + NONCE_SIZE + 1 + TAG_SIZE
# A storage hash guards a blob against bit rot on the server, not against an attacker (AES-GCM
# does that end to end): 16 bytes are plenty, and save 16 a chunk in the server's index.
STORAGE_HASH_SIZE = 16

_RAW = 0
_ZSTD = 1
# Stored uncompressed when zstd saves less than this fraction: decompressing costs time at
# restore for no space back.
_MIN_SAVING = 0.03
# A chunk whose first 64 KiB do not compress at level 1 is almost surely incompressible
# (media, archives, random data); the probe costs far less than compressing all of it.
_PROBE_SIZE = 64 * 1024
_PROBE_LEVEL = 1
# From this size on, a chunk stored as it is has its flag byte and data encrypted as two steps
# of one GCM stream rather than copied together first: the copy of a few MiB cost more than the
# encryption itself (1.25 MiB chunk: 2.2-2.7 ms -> 0.5-0.7 ms). Smaller ones skip the ~12 us of
# setting up a stream. Compressed data is written after its flag byte to begin with.
_STREAMED_SEAL = 64 * 1024


# The whole-file digest new snapshots record, and every one restore can verify. BLAKE3 runs at
# ~7.5 GB/s here against SHA-256's ~2 GB/s (SHA-NI): a quarter of the CPU on both backup and
# restore for the same end-to-end check. Trees written before it carry sha256.
FILE_DIGEST = "blake3"
FILE_DIGESTS = ("blake3", "sha256")
# A file that is one chunk needs no digest of its own: its chunk id is the keyed BLAKE3 of all
# of it. Trees omit it ("chunk:<id>" in a node), which took a third of the compressed trees of
# a tree of small files (/usr/share: 4.7 -> 2.9 MB); restore verifies the file against the id.
ONE_CHUNK_DIGEST = "chunk"


class FileHash(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def file_hash(digest: str = FILE_DIGEST, id_key: bytes | None = None) -> FileHash:
    """A running hash for a file digest (``"blake3"`` or ``"blake3:<hex>"``, or sha256; a
    one-chunk file's needs the key chunk ids are derived with)."""
    algorithm = digest.partition(":")[0]
    if algorithm == "blake3":
        return blake3.blake3()
    if algorithm == ONE_CHUNK_DIGEST and id_key is not None:
        return blake3.blake3(key=id_key)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise CryptoError(f"unknown file digest {algorithm!r}")


def storage_hash(sealed: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(sealed).digest(length=STORAGE_HASH_SIZE)


def storage_hash_matches(sealed: bytes | bytearray | memoryview, expected: bytes) -> bool:
    """Whether a blob is what was stored: hashes of 32 bytes, written before, are the same
    BLAKE3 output taken longer."""
    return blake3.blake3(sealed).digest(length=len(expected)) == expected


@dataclass(frozen=True)
class MasterKey:
    """The repository secret: one key for sealing, one for chunk ids."""

    seal_key: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    def to_text(self) -> str:
        return base64.b64encode(self.seal_key + self.id_key).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise ConfigError("master key in the client config is not valid base64") from exc
        if len(raw) != 64:
            raise ConfigError("master key in the client config has the wrong length")
        return cls(raw[:32], raw[32:])


class _KeptCompressor:
    """zstd into a buffer kept for all chunks, ahead of a flag byte, through libzstd itself.

    python-zstandard's ``compress`` allocates a fresh buffer of the compression bound for every
    chunk and keeps all of it (4 MiB for a 4 MiB chunk that compresses to 1), and the flag byte
    needed a copy of the output after it. The libzstd that python-zstandard ships is reachable
    through its cffi backend, whose calls release the GIL like its C backend's.
    """

    def __init__(self) -> None:
        self._context = zstd_ffi.gc(zstd_lib.ZSTD_createCCtx(), zstd_lib.ZSTD_freeCCtx)
        # Anonymous memory: only pages a chunk's output has reached count toward the RSS.
        self._buffer = mmap.mmap(-1, 1)

    def body(self, flag: int, size: int) -> memoryview:
        """The kept buffer's first ``1 + size`` bytes, the flag byte set: valid until next use."""
        self._make_room(size)
        self._buffer[0] = flag
        return memoryview(self._buffer)[: 1 + size]

    def compress(self, plaintext: bytes | memoryview, level: int, limit: int) -> int | None:
        """Compress into the kept buffer after its flag byte; None if it takes over ``limit``."""
        room = zstd_lib.ZSTD_compressBound(len(plaintext))
        self._make_room(room)
        with zstd_ffi.from_buffer(self._buffer) as out, zstd_ffi.from_buffer(plaintext) as data:
            result = zstd_lib.ZSTD_compressCCtx(
                self._context, out + 1, room, data, len(plaintext), level
            )
        if not zstd_lib.ZSTD_isError(result):
            return int(result) if result <= limit else None
        reason = zstd_ffi.string(zstd_lib.ZSTD_getErrorName(result)).decode()
        raise CryptoError(f"zstd could not compress a chunk: {reason}")

    def _make_room(self, size: int) -> None:
        if len(self._buffer) < 1 + size:
            self._buffer = mmap.mmap(-1, 1 + size)


def _sealed_size(plaintext: bytes | memoryview, body: memoryview | None) -> int:
    """A sealed blob's length: a body of flag and data, or the flag and the plaintext."""
    return 1 + NONCE_SIZE + (1 + len(plaintext) if body is None else len(body)) + TAG_SIZE


class Sealer:
    """Compresses and encrypts chunks. Not thread-safe: use one per thread."""

    def __init__(self, key: MasterKey, level: int = 3) -> None:
        self._key = key
        self._level = level
        self._aead = AESGCM(key.seal_key)
        # Made at the first seal: a sealer that only opens blobs (restores, tree readers) never
        # compresses.
        self._compressor: _KeptCompressor | None = None
        self._decompressor = zstandard.ZstdDecompressor()

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        return blake3.blake3(plaintext, key=self._key.id_key).digest()

    def seal(self, chunk_id: bytes, plaintext: bytes | memoryview) -> bytearray:
        """The sealed blob, encrypted straight into its buffer."""
        body = self._body(plaintext)
        sealed = bytearray(_sealed_size(plaintext, body))
        self._encrypt(chunk_id, plaintext, body, memoryview(sealed))
        return sealed

    def seal_into(self, chunk_id: bytes, plaintext: bytes | memoryview, out: memoryview) -> int:
        """Seal into the start of ``out``, which has room for ``SEAL_OVERHEAD`` bytes more than
        the plaintext; the sealed blob's length."""
        body = self._body(plaintext)
        size = _sealed_size(plaintext, body)
        self._encrypt(chunk_id, plaintext, body, out[:size])
        return size

    def open(
        self, chunk_id: bytes, sealed: bytes | memoryview, verify_id: bool = True
    ) -> bytes | memoryview:
        """Decrypt, decompress and verify a blob against the id it was stored under.

        AES-GCM with the id as associated data already proves the blob was sealed for this id
        with this key; ``verify_id`` also re-derives the id from the plaintext. A caller that
        checks a digest over the whole file (restore) may skip that second pass.
        """
        sealed = memoryview(sealed)
        if len(sealed) < SEAL_OVERHEAD or sealed[0] != SEAL_VERSION:
            raise CryptoError(f"blob {chunk_id.hex()[:16]} has an unknown format")
        nonce = sealed[1 : 1 + NONCE_SIZE]
        try:
            body = self._aead.decrypt(nonce, sealed[1 + NONCE_SIZE :], chunk_id)
        except InvalidTag as exc:
            raise CryptoError(f"blob {chunk_id.hex()[:16]} failed authentication") from exc
        plaintext = self._decompress(chunk_id, body)
        if verify_id and self.chunk_id(plaintext) != chunk_id:
            raise CryptoError(f"blob {chunk_id.hex()[:16]} does not match its id")
        return plaintext

    def seal_document(self, label: bytes, document: dict[str, Any]) -> str:
        """Encrypt a small JSON document bound to ``label``; base64 for a JSON header."""
        nonce = os.urandom(NONCE_SIZE)
        body = json.dumps(document, sort_keys=True).encode("utf-8")
        sealed = bytes((SEAL_VERSION,)) + nonce + self._aead.encrypt(nonce, body, label)
        return base64.b64encode(sealed).decode("ascii")

    def open_document(self, label: bytes, text: str) -> dict[str, Any]:
        try:
            sealed = base64.b64decode(text, validate=True)
            if len(sealed) < 1 + NONCE_SIZE + TAG_SIZE or sealed[0] != SEAL_VERSION:
                raise ValueError("unknown format")
            nonce = sealed[1 : 1 + NONCE_SIZE]
            document = json.loads(self._aead.decrypt(nonce, sealed[1 + NONCE_SIZE :], label))
        except (ValueError, InvalidTag) as exc:
            raise CryptoError(f"sealed {label.decode()} failed to open") from exc
        if not isinstance(document, dict):
            raise CryptoError(f"sealed {label.decode()} is not an object")
        return document

    def _encrypt(
        self,
        chunk_id: bytes,
        plaintext: bytes | memoryview,
        body: memoryview | None,
        sealed: memoryview,
    ) -> None:
        """Fill ``sealed`` (its exact size): version, nonce, and the body encrypted, or, with no
        body, the flag byte and the plaintext as two steps of one GCM stream."""
        nonce = os.urandom(NONCE_SIZE)
        sealed[0] = SEAL_VERSION
        sealed[1 : 1 + NONCE_SIZE] = nonce
        out = sealed[1 + NONCE_SIZE :]
        if body is not None:
            self._aead.encrypt_into(nonce, body, chunk_id, out)
            return
        encryptor = Cipher(algorithms.AES(self._key.seal_key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(chunk_id)
        # update_into wants room for a block beyond what it writes: the tag's place gives it.
        encryptor.update_into(bytes((_RAW,)), out)
        encryptor.update_into(plaintext, out[1:])
        encryptor.finalize()
        out[-TAG_SIZE:] = encryptor.tag

    def _body(self, plaintext: bytes | memoryview) -> memoryview | None:
        """The flag byte and the data to encrypt, in the compressor's buffer; None for a large
        chunk stored as it is, which is encrypted where it lies."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = _KeptCompressor()
        size = len(plaintext)
        packed = self._compressed_size(compressor, plaintext)
        if packed is not None:
            return compressor.body(_ZSTD, packed)
        if size >= _STREAMED_SEAL:
            return None
        body = compressor.body(_RAW, size)
        body[1:] = plaintext
        return body

    def _compressed_size(
        self, compressor: _KeptCompressor, plaintext: bytes | memoryview
    ) -> int | None:
        """Compressed into the compressor's buffer, or None if zstd saves too little."""
        size = len(plaintext)
        if size > _PROBE_SIZE:
            probe_limit = int(_PROBE_SIZE * (1 - _MIN_SAVING))
            probe = plaintext[:_PROBE_SIZE]
            if compressor.compress(probe, _PROBE_LEVEL, probe_limit) is None:
                return None
        return compressor.compress(plaintext, self._level, int(size * (1 - _MIN_SAVING)))

    def _decompress(self, chunk_id: bytes, body: bytes) -> bytes | memoryview:
        flag, data = body[0], memoryview(body)[1:]
        if flag == _RAW:
            return data
        if flag == _ZSTD:
            try:
                return self._decompressor.decompress(data)
            except zstandard.ZstdError as exc:
                raise CryptoError(f"blob {chunk_id.hex()[:16]} does not decompress") from exc
        raise CryptoError(f"blob {chunk_id.hex()[:16]} has an unknown compression")


_KDF_TIME = 3
_KDF_MEMORY_KIB = 64 * 1024
_KDF_LANES = 4


# cryptography's Argon2id (50.x, lanes > 1) deadlocks when two threads derive at once: one at a
# time per process (it runs only at enrollment and recovery).
_KDF_LOCK = threading.Lock()


def _derive(passphrase: str, salt: bytes, iterations: int, memory_kib: int, lanes: int) -> bytes:
    kdf = Argon2id(salt=salt, length=32, iterations=iterations, lanes=lanes, memory_cost=memory_kib)
    with _KDF_LOCK:
        return kdf.derive(passphrase.encode("utf-8"))


def wrap_key(key: MasterKey, passphrase: str) -> str:
    """The master key sealed under an Argon2id-derived key, as a JSON document for the server."""
    salt = os.urandom(16)
    kek = _derive(passphrase, salt, _KDF_TIME, _KDF_MEMORY_KIB, _KDF_LANES)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(kek).encrypt(nonce, key.seal_key + key.id_key, b"rpybackup-master-key")
    doc = {
        "kdf": "argon2id",
        "iterations": _KDF_TIME,
        "memory_kib": _KDF_MEMORY_KIB,
        "lanes": _KDF_LANES,
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "sealed": base64.b64encode(sealed).decode(),
    }
    return json.dumps(doc, sort_keys=True)


def unwrap_key(wrapped: str, passphrase: str) -> MasterKey:
    try:
        doc = json.loads(wrapped)
        salt = base64.b64decode(doc["salt"])
        nonce = base64.b64decode(doc["nonce"])
        sealed = base64.b64decode(doc["sealed"])
        iterations, memory_kib, lanes = doc["iterations"], doc["memory_kib"], doc["lanes"]
        if (
            doc["kdf"] != "argon2id"
            or not (1 <= iterations <= 16)
            or not (8 <= memory_kib <= 4 * 1024 * 1024)
        ):
            raise ValueError("unsupported KDF parameters")
    except (ValueError, KeyError, TypeError) as exc:
        raise CryptoError("the wrapped master key is malformed") from exc
    kek = _derive(passphrase, salt, iterations, memory_kib, lanes)
    try:
        raw = AESGCM(kek).decrypt(nonce, sealed, b"rpybackup-master-key")
    except InvalidTag as exc:
        raise CryptoError("wrong passphrase for the wrapped master key") from exc
    return MasterKey(raw[:32], raw[32:])
