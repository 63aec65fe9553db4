"""kill -9 of the client in the middle of a run: no half snapshot, and the next run resumes.

The client runs as `rpybackup-core run --json` in its own process and is killed once the
server has sealed some of its packs. The next run must send exactly the bytes the server does
not hold yet: nothing that survived the kill is uploaded again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from .conftest import FIGURES, Profile
from .harness import CLI, Daemon, assert_clean, manifest, restored_manifest

FILE_SIZE = 1024 * 1024


def _run(config: Path, source: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "--config", str(config), "run", str(source), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_packs(daemon: Daemon, process: subprocess.Popen[str], packs: int) -> None:
    end = time.monotonic() + 120
    while daemon.pack_files() < packs:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < end, "the server never sealed enough packs"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def test_killed_client_leaves_no_snapshot_and_the_next_run_resumes(
    daemon: Daemon, tmp_path: Path, profile: Profile
) -> None:
    config = daemon.enroll("alice", tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    rng = profile.rng("client-kill")
    # Each kill comes at most 3 packs (3 MiB) after the last, but by then the server may hold
    # up to 8 MiB more for its pack writer and the socket buffers a few more, all of which a
    # killed session still stores: 20 MiB per kill leaves every run something still to send.
    files = 20 * profile.client_kills + 4
    for index in range(files):
        (source / f"part-{index:02d}.bin").write_bytes(rng.randbytes(FILE_SIZE))
    want = manifest(source)

    for kill in range(profile.client_kills):
        # Each run resumes the last and is killed a few packs further on.
        target = daemon.pack_files() + rng.randrange(1, 4)
        _kill_after_packs(daemon, _run(config.path, source), target)
        daemon.wait_sessions_ended()
        assert daemon.client("alice").snapshots() == [], f"a half snapshot after kill {kill}"
    held = daemon.stored_chunk_bytes("alice")
    assert held > 0

    finished = _run(config.path, source)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err
    uploaded = json.loads(out)["uploaded_bytes"]
    stored = daemon.stored_chunk_bytes("alice")
    # Every byte the last run sent is new to the server: none of the `held` bytes came again.
    assert uploaded == stored - held
    assert uploaded < files * FILE_SIZE - held // 2

    snapshots = daemon.client("alice").snapshots()
    assert len(snapshots) == 1
    daemon.client("alice").restore(snapshots[0].id, tmp_path / "restored")
    assert restored_manifest(tmp_path / "restored", source) == want
    assert_clean(daemon.check(read_data=True))
    FIGURES["client kills survived"] += profile.client_kills
