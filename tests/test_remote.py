"""The client's side of the wire: pipelined gets are read in the order they were asked."""

from __future__ import annotations

import pytest

from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.errors import ProtocolError
from rpybackup_core.remote import RemoteRepository


def _stored(remote: RemoteRepository, sealer: Sealer, texts: list[bytes]) -> list[bytes]:
    ids = [sealer.chunk_id(text) for text in texts]
    remote.put([(cid, sealer.seal(cid, text)) for cid, text in zip(ids, texts, strict=True)])
    remote.flush()
    return ids


def test_gets_in_flight_are_answered_in_order_and_block_other_requests(server) -> None:
    config = server.enroll("alice")
    sealer = Sealer(MasterKey.from_text(config.key))
    with RemoteRepository.from_config(config) as remote:
        first, second = _stored(remote, sealer, [b"first chunk", b"second chunk"])
        asked_first = remote.ask_get([first])
        asked_second = remote.ask_get([second, first])

        with pytest.raises(ProtocolError, match="order"):
            remote.get_answer(asked_second, [second, first])
        with pytest.raises(ProtocolError, match="before earlier chunks were read"):
            remote.snapshots()

        (got,) = remote.get_answer(asked_first, [first])
        assert got[0] == first and sealer.open(first, got[1]) == b"first chunk"
        answers = list(remote.get_answer(asked_second, [second, first]))
        assert [chunk_id for chunk_id, _ in answers] == [second, first]
        assert sealer.open(second, answers[0][1]) == b"second chunk"
        assert remote.snapshots() == []
