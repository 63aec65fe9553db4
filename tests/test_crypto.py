"""Sealing, chunk ids and passphrase wrapping."""

from __future__ import annotations

import os
import threading
import tracemalloc

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpybackup_core.crypto import (
    MasterKey,
    Sealer,
    storage_hash,
    storage_hash_matches,
    unwrap_key,
    wrap_key,
)
from rpybackup_core.errors import ConfigError, CryptoError


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(MasterKey.generate())


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", b"compressible " * 10_000, os.urandom(300_000)],
    ids=["empty", "tiny", "text", "random"],
)
def test_seal_then_open_round_trips(sealer: Sealer, plaintext: bytes) -> None:
    chunk_id = sealer.chunk_id(plaintext)
    assert sealer.open(chunk_id, sealer.seal(chunk_id, plaintext)) == plaintext


@pytest.mark.parametrize("size", [65_535, 65_536, 65_537, 4 * 1024 * 1024])
@pytest.mark.parametrize("kind", ["random", "text"])
def test_every_sealed_blob_is_one_aes_gcm_message_of_flag_and_data(size: int, kind: str) -> None:
    """Large chunks are encrypted in two steps, small ones in one: the format is the same."""
    key = MasterKey.generate()
    sealer = Sealer(key)
    text = b"".join(b"line %d of some text\n" % number for number in range(size // 10))
    plaintext = os.urandom(size) if kind == "random" else text[:size]
    chunk_id = sealer.chunk_id(plaintext)
    sealed = sealer.seal(chunk_id, plaintext)
    body = AESGCM(key.seal_key).decrypt(bytes(sealed[1:13]), bytes(sealed[13:]), chunk_id)
    if kind == "random":
        assert body == b"\x00" + plaintext
    else:
        assert body[0] == 1 and zstandard.ZstdDecompressor().decompress(body[1:]) == plaintext
    assert sealer.open(chunk_id, sealed) == plaintext


def test_compressible_data_is_stored_smaller_and_random_data_is_not_inflated(
    sealer: Sealer,
) -> None:
    text = b"the quick brown fox " * 20_000
    noise = os.urandom(400_000)
    assert len(sealer.seal(sealer.chunk_id(text), text)) < len(text) // 10
    assert len(sealer.seal(sealer.chunk_id(noise), noise)) <= len(noise) + 64


def test_chunk_ids_are_keyed(sealer: Sealer) -> None:
    other = Sealer(MasterKey.generate())
    assert sealer.chunk_id(b"same data") != other.chunk_id(b"same data")
    assert sealer.chunk_id(b"same data") == sealer.chunk_id(b"same data")


def test_a_flipped_bit_fails_authentication(sealer: Sealer) -> None:
    chunk_id = sealer.chunk_id(b"payload")
    sealed = bytearray(sealer.seal(chunk_id, b"payload"))
    sealed[-5] ^= 0x01
    with pytest.raises(CryptoError, match="authentication"):
        sealer.open(chunk_id, bytes(sealed))


def test_a_blob_moved_to_another_id_fails(sealer: Sealer) -> None:
    sealed = sealer.seal(sealer.chunk_id(b"a"), b"a")
    with pytest.raises(CryptoError):
        sealer.open(sealer.chunk_id(b"b"), sealed)


def test_another_key_cannot_open(sealer: Sealer) -> None:
    chunk_id = sealer.chunk_id(b"secret")
    with pytest.raises(CryptoError):
        Sealer(MasterKey.generate()).open(chunk_id, sealer.seal(chunk_id, b"secret"))


def test_storage_hash_changes_with_any_byte() -> None:
    assert storage_hash(b"abc") != storage_hash(b"abd")
    assert len(storage_hash(b"")) == 16


def test_a_blob_matches_its_storage_hash_of_either_length() -> None:
    """Index rows written before hold 32-byte hashes: the same BLAKE3 output, longer."""
    older = blake3.blake3(b"sealed blob").digest()
    assert storage_hash_matches(b"sealed blob", storage_hash(b"sealed blob"))
    assert storage_hash_matches(b"sealed blob", older)
    assert not storage_hash_matches(b"sealed blot", older)
    assert not storage_hash_matches(b"sealed blot", storage_hash(b"sealed blob"))


def test_sealed_documents_round_trip_and_are_bound_to_their_label(sealer: Sealer) -> None:
    text = sealer.seal_document(b"snapshot-meta", {"paths": ["/home"]})
    assert sealer.open_document(b"snapshot-meta", text) == {"paths": ["/home"]}
    with pytest.raises(CryptoError):
        sealer.open_document(b"other", text)


def test_key_text_round_trips_and_rejects_garbage() -> None:
    key = MasterKey.generate()
    assert MasterKey.from_text(key.to_text()) == key
    with pytest.raises(ConfigError):
        MasterKey.from_text("not base64!")
    with pytest.raises(ConfigError):
        MasterKey.from_text("c2hvcnQ=")


def test_wrapped_key_opens_only_with_its_passphrase() -> None:
    key = MasterKey.generate()
    wrapped = wrap_key(key, "correct horse")
    assert unwrap_key(wrapped, "correct horse") == key
    assert key.to_text() not in wrapped
    with pytest.raises(CryptoError, match="wrong passphrase"):
        unwrap_key(wrapped, "battery staple")
    with pytest.raises(CryptoError, match="malformed"):
        unwrap_key("{}", "correct horse")


def test_key_wrapping_from_several_threads_at_once_finishes() -> None:
    key = MasterKey.generate()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(wrap_key(key, "pw")), daemon=True)
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4, "Argon2id derivations deadlocked"
    assert all(unwrap_key(wrapped, "pw") == key for wrapped in results)


@pytest.mark.parametrize("kind", ["text", "small text", "small random"])
def test_sealing_allocates_little_beyond_the_sealed_blob(kind: str) -> None:
    """Compression goes into a buffer the sealer keeps, not a fresh one of the zstd bound."""
    text = b"".join(b"line %d of some text\n" % number for number in range(200_000))
    plaintext = {
        "text": text[: 4 * 1024 * 1024],
        "small text": text[:60_000],
        "small random": os.urandom(60_000),
    }[kind]
    sealer = Sealer(MasterKey.generate())
    chunk_id = sealer.chunk_id(plaintext)
    sealer.seal(chunk_id, plaintext)
    tracemalloc.start()
    try:
        sealed = sealer.seal(chunk_id, plaintext)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(sealed) + 16 * 1024
