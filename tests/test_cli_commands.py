"""The smaller commands of the CLI contract: list, get, client list/remove, JSON shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rpybackup_core.cli import output
from rpybackup_core.cli.main import MODULE_OF, main
from tests.conftest import settled


def test_list_shows_local_files_and_their_backup_state(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "kept.txt").write_text("one\n")
    settled(folder)
    assert cli("--config", str(config.path), "run", str(folder)).code == 0
    (folder / "fresh.txt").write_text("two\n")

    listed = cli("--config", str(config.path), "list", str(folder), "--json")
    assert listed.code == 0, listed.err
    states = {e["name"]: e["state"] for e in json.loads(listed.out)["entries"]}
    assert states == {"kept.txt": "backed up", "fresh.txt": "new or changed"}


def test_names_reach_the_terminal_printable_and_never_as_markup(
    server, cli, tmp_path: Path
) -> None:
    """A stored name with an escape sequence (it would retitle the window) or Rich markup is
    listed as text a person can read, by rlist from the snapshot and by list from the disk;
    --json keeps the exact name."""
    config = server.enroll("alice")
    folder = tmp_path / "folder"
    folder.mkdir()
    hostile = "t\x1b]0;x\x07[b]y"
    (folder / hostile).write_text("x\n")
    assert cli("--config", str(config.path), "run", str(folder)).code == 0

    remote = cli("--config", str(config.path), "rlist", str(folder))
    local = cli("--config", str(config.path), "list", str(folder))
    for listed in (remote, local):
        assert listed.code == 0, listed.err
        assert "\x1b" not in listed.out and "\x07" not in listed.out
        assert "t\\x1b]0;x\\x07[b]y" in listed.out
    exact = cli("--config", str(config.path), "rlist", str(folder), "--json")
    assert str(folder / hostile) in [e["path"] for e in json.loads(exact.out)["entries"]]


def test_list_of_a_missing_directory_is_a_usage_error(cli, tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path / "none.toml"), "list", str(tmp_path / "nope"))
    assert result.code == 2
    assert "is not a directory" in result.err


def test_get_into_a_directory_and_from_an_older_snapshot(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    note = tmp_path / "note.txt"
    note.write_text("version one\n")
    first = json.loads(cli("--config", str(config.path), "put", str(note), "--json").out)
    note.write_text("version two\n")
    assert cli("--config", str(config.path), "put", str(note)).code == 0

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    newest = cli("--config", str(config.path), "get", str(note), "-o", str(out_dir))
    assert newest.code == 0, newest.err
    assert (out_dir / "note.txt").read_text() == "version two\n"
    older = tmp_path / "older.txt"
    assert (
        cli(
            "--config",
            str(config.path),
            "get",
            str(note),
            "-o",
            str(older),
            "--snapshot",
            first["snapshot"][:8],
        ).code
        == 0
    )
    assert older.read_text() == "version one\n"


def test_get_of_an_unknown_path_says_so(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    note = tmp_path / "note.txt"
    note.write_text("x\n")
    assert cli("--config", str(config.path), "put", str(note)).code == 0
    result = cli("--config", str(config.path), "get", "/no/such/file")
    assert result.code == 1
    assert "in no snapshot" in result.err


def test_get_of_a_directory_is_refused(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    note = tmp_path / "note.txt"
    note.write_text("x\n")
    assert cli("--config", str(config.path), "put", str(note)).code == 0
    result = cli("--config", str(config.path), "get", str(tmp_path), "-o", str(tmp_path / "o"))
    assert result.code == 2
    assert "not a file" in result.err


def test_client_list_and_remove(server, cli) -> None:
    alice = server.enroll("alice")
    server.add_client("bob", admin=True)
    listed = json.loads(cli("--config", str(server.config.path), "client", "list", "--json").out)
    by_name = {c["name"]: c for c in listed}
    assert by_name["alice"]["enrolled"] and not by_name["bob"]["enrolled"]
    assert by_name["bob"]["admin"] is True
    assert by_name["alice"]["snapshots"] == 0

    assert cli("--config", str(server.config.path), "client", "remove", "alice").code == 0
    denied = cli("--config", str(alice.path), "snapshots")
    assert denied.code == 1
    assert "not accepted" in denied.err


def test_ambiguous_and_malformed_snapshot_ids(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    note = tmp_path / "n.txt"
    note.write_text("x\n")
    assert cli("--config", str(config.path), "put", str(note)).code == 0
    bad = cli("--config", str(config.path), "restore", "xyz!", "--target", str(tmp_path / "t"))
    assert bad.code == 2
    missing = cli(
        "--config", str(config.path), "restore", "ffffffff", "--target", str(tmp_path / "t")
    )
    assert missing.code == 1 and "no snapshot" in missing.err


def test_a_client_command_loads_only_its_own_command_module() -> None:

    probe = (
        "import sys\n"
        "from rpybackup_core.cli.main import main\n"
        "try:\n"
        "    main(['run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('rpybackup_core', 'pyfastcdc'))))\n"
    )
    loaded = (
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
        .stdout.split("\n")[-2]
        .split()
    )
    assert "rpybackup_core.cli.client_cmds" in loaded
    for heavy in ("rpybackup_core.server", "rpybackup_core.pruner", "rpybackup_core.watch"):
        assert heavy not in loaded
    # pyfastcdc (with typing_extensions, ~20 ms of CPU) only once a large file is cut.
    assert "pyfastcdc" not in loaded


def test_a_restore_into_a_pipe_prints_its_summary_as_plain_text_without_rich(
    server, tmp_path: Path
) -> None:
    """Output for a script or a log is written as it is: the target's brackets are not read
    as markup, and the command does not import Rich (~25 ms) to print one line."""
    config = server.enroll("alice")
    note = tmp_path / "n.txt"
    note.write_text("x\n")
    assert main(["--config", str(config.path), "put", str(note)]) == 0
    target = tmp_path / "out[b]x[/b]"
    probe = (
        "import sys\n"
        "from rpybackup_core.cli.main import main\n"
        f"code = main(['--config', {str(config.path)!r}, 'restore', 'latest', '--target', "
        f"{str(target)!r}])\n"
        "print('rich loaded' if 'rich' in sys.modules else 'rich not loaded', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    restored = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert restored.returncode == 0, restored.stderr
    assert f"to {target}: 1 files" in restored.stdout
    assert restored.stderr.strip().endswith("rich not loaded")
    assert (target / note.relative_to("/")).read_text() == "x\n"


def test_help_and_a_mistyped_command_list_every_command(capsys) -> None:

    with pytest.raises(SystemExit):
        main(["--help"])
    with pytest.raises(SystemExit) as exited:
        main(["runn"])
    assert exited.value.code == 2
    choices = capsys.readouterr().err
    assert all(f"'{command}'" in choices for command in MODULE_OF)


def test_rlist_writes_a_long_listing_in_batches_as_the_same_text(
    server, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing is written a few entries at a time as it is read, never held whole; the
    text is what one document printed at once would be, as lines and as JSON."""
    monkeypatch.setattr(output, "_WRITE_BATCH", 2)
    config = server.enroll("alice")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "void").mkdir()
    for name in ("a", "b", "c", "sub/d", "sub/e"):
        (folder / name).write_text(name)
    (folder / "link").symlink_to("a")
    assert cli("--config", str(config.path), "run", str(folder)).code == 0

    listed = cli("--config", str(config.path), "rlist", str(folder), "--json")
    document = json.loads(listed.out)
    assert listed.out == json.dumps(document, indent=2, sort_keys=True) + "\n"
    paths = [entry["path"] for entry in document["entries"]]
    names = ["a", "b", "c", "link", "sub", "sub/d", "sub/e", "void"]
    assert paths == [str(folder / name) for name in names]

    lines = cli("--config", str(config.path), "rlist", str(folder)).out
    suffixes = {"link": " -> a", "sub": "/", "void": "/"}
    assert lines == "".join(f"{folder / name}{suffixes.get(name, '')}\n" for name in names)

    empty = cli("--config", str(config.path), "rlist", str(folder / "void"), "--json")
    snapshot = document["snapshot"]
    assert empty.out == json.dumps({"entries": [], "snapshot": snapshot}, indent=2) + "\n"
