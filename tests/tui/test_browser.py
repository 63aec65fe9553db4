"""The backup browser: snapshots, a tree loaded one folder at a time, details, restores."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Tree
from textual.widgets.tree import TreeNode

from rpybackup_core.client import ListedEntry
from rpybackup_core.demo import compare_trees
from rpybackup_core.tree import SYMLINK, Node
from rpybackup_tui.app import ConsoleApp
from rpybackup_tui.screens.browser import PAGE, describe_entry, label_for

from .conftest import day, drive, outage, text_of, wait_for


def loaded(node: TreeNode) -> bool:
    return node.data is not None and node.data.loaded


def child(node: TreeNode, label: str) -> TreeNode:
    for item in node.children:
        if str(item.label).rstrip("/").split("  ")[0] == label:
            return item
    names = [str(c.label) for c in node.children]
    raise AssertionError(f"{label} is not under {node.label}: {names}")


async def open_latest(app: ConsoleApp, pilot) -> Tree:
    await pilot.press("3")
    table = app.screen.query_one("#snapshots", DataTable)
    await wait_for(pilot, lambda: table.row_count > 0, "the snapshot list")
    table.focus()
    await pilot.press("enter")
    tree = app.screen.query_one("#files", Tree)
    await wait_for(pilot, lambda: loaded(tree.root), "the snapshot's top folder")
    return tree


async def expand_to(app: ConsoleApp, pilot, tree: Tree, path: Path) -> TreeNode:
    node = tree.root
    for part in path.parts[1:]:
        node = child(node, part)
        node.expand()
        await wait_for(pilot, lambda n=node: loaded(n), f"the folder {part}")
    return node


def test_snapshots_then_a_lazy_tree_then_details(server, alice, sample_tree: Path) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        tree = await open_latest(app, pilot)
        table = app.screen.query_one("#snapshots", DataTable)
        assert table.get_row_at(0)[:2] == ["2026-01-02 12:00", "45"]
        top = await expand_to(app, pilot, tree, sample_tree)
        docs = child(top, "docs")
        assert not loaded(docs) and not docs.children, "a folder loads only when opened"
        photo = child(top, "photo.raw")
        tree.move_cursor(photo)
        await pilot.pause()
        details = text_of(app, "#details")
        assert f"{sample_tree}/photo.raw" in details
        assert "6.0 MiB" in details and "blake3:" in details

    drive(alice, scenario)


def test_a_snapshots_tags_show_as_text_not_as_markup(server, alice) -> None:
    """A tag is any short text the client chose: a markup link in one stays text (it would
    otherwise be an action to click) and an escape sequence is shown escaped."""
    server.client("alice").backup(when=day(3), tags=["[@click=app.quit]x", "a\x1b[2Jb"])

    async def scenario(app: ConsoleApp, pilot) -> None:
        await pilot.press("3")
        table = app.screen.query_one("#snapshots", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, "the snapshot list")
        assert str(table.get_row_at(0)[3]) == "[@click=app.quit]x,a\\x1b[2Jb"

    drive(alice, scenario)


def test_restore_a_file_a_folder_and_the_whole_snapshot(
    server, alice, sample_tree: Path, tmp_path: Path
) -> None:
    one, folder, whole = tmp_path / "one", tmp_path / "folder", tmp_path / "whole"

    async def restore_to(app: ConsoleApp, pilot, key: str, target: Path) -> None:
        await pilot.press(key)
        await wait_for(pilot, lambda: app.screen.query("#target"), "the restore dialog")
        app.screen.query_one("#target", Input).value = str(target)
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: "restored" in text_of(app, "#browser-status"), "the restore result"
        )
        assert "verified" in text_of(app, "#browser-status")

    async def scenario(app: ConsoleApp, pilot) -> None:
        tree = await open_latest(app, pilot)
        top = await expand_to(app, pilot, tree, sample_tree)
        tree.move_cursor(child(top, "run.sh"))
        tree.focus()
        await restore_to(app, pilot, "r", one)
        tree.move_cursor(child(top, "docs"))
        await restore_to(app, pilot, "r", folder)
        await restore_to(app, pilot, "a", whole)

    drive(alice, scenario)
    inside = sample_tree.relative_to("/")
    assert (one / inside / "run.sh").read_bytes() == (sample_tree / "run.sh").read_bytes()
    assert not (one / inside / "photo.raw").exists(), "only the chosen file is restored"
    assert compare_trees(sample_tree / "docs", folder / inside / "docs") == []
    assert not (folder / inside / "run.sh").exists(), "only the chosen folder is restored"
    assert (whole / inside / "photo.raw").read_bytes() == (sample_tree / "photo.raw").read_bytes()


def test_a_huge_folder_shows_a_page_and_loads_the_rest_on_demand(server, tmp_path: Path) -> None:
    """A folder longer than a page comes a page at a time in name order, each read from the
    server when asked for; a page that fails to load can be asked for again."""
    big = tmp_path / "big"
    big.mkdir()
    count = 2 * PAGE + 234
    names = [f"f{index:05}" for index in range(count)]
    for name in names:
        (big / name).write_bytes(b"x")
    config = server.enroll("dora")
    config.sources = [str(big)]
    config.save()
    server.client("dora").backup()

    def shown(folder: TreeNode) -> list[str]:
        return [str(row.label).split("  ")[0] for row in folder.children if row.data.listed]

    async def scenario(app: ConsoleApp, pilot) -> None:
        tree = await open_latest(app, pilot)
        folder = await expand_to(app, pilot, tree, big)
        assert shown(folder) == names[:PAGE]
        assert "1,234 more" in str(folder.children[-1].label)

        with outage(server):
            tree.select_node(folder.children[-1])
            await wait_for(
                pilot,
                lambda: "could not open" in text_of(app, "#browser-status"),
                "the failure message",
            )
        assert len(folder.children) == PAGE + 1
        tree.select_node(folder.children[-1])
        await wait_for(pilot, lambda: len(folder.children) == 2 * PAGE + 1, "the second page")
        assert "234 more" in str(folder.children[-1].label)
        tree.select_node(folder.children[-1])
        await wait_for(pilot, lambda: len(folder.children) == count, "the last page")
        assert shown(folder) == names

    drive(config, scenario)


def test_the_browser_survives_a_server_restart(server, alice, sample_tree: Path) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        tree = await open_latest(app, pilot)
        top = await expand_to(app, pilot, tree, sample_tree)
        docs = child(top, "docs")
        with outage(server):
            docs.expand()
            await wait_for(
                pilot,
                lambda: "could not open" in text_of(app, "#browser-status"),
                "the failure message",
            )
            assert not docs.is_expanded and not loaded(docs)
        docs.expand()
        await wait_for(pilot, lambda: loaded(docs), "the folder after the restart")
        assert len(docs.children) == 41

    drive(alice, scenario)


def test_a_stored_name_is_shown_printable_in_the_tree_and_the_details() -> None:
    """Names come from a snapshot, which another machine wrote: an escape sequence in one is
    shown as text, never sent to the admin's terminal."""
    link = ListedEntry(
        "/srv/a\x1b[2J[@click=app.quit]b",
        Node("a\x1b[2J[@click=app.quit]b", SYMLINK, 0o777, 0, target="\x1b]0;owned\x07"),
    )
    label = label_for(link)
    assert label.plain == "a\\x1b[2J[@click=app.quit]b → \\x1b]0;owned\\x07"
    details = describe_entry(link)
    assert "\x1b" not in details and "\x07" not in details
    assert details.startswith("/srv/a\\x1b[2J[@click=app.quit]b\n")
