"""Two checkouts of rPyBackup in alternating pairs on the same data: did a change move a step?

    python bench/ab.py A_DIR B_DIR [--scale 0.25 | --tree DIR] [--rounds 8] [--restore]
                       [--work DIR] [--fs-gib 16]

A_DIR and B_DIR are source trees of rPyBackup (``git worktree add /tmp/a <commit>``). Each
round makes the data afresh, gives each checkout its own server, repository and files cache,
and runs both on it step by step, alternating which goes first: first backup, no-change
re-run, ~5 % mutation, re-run and, with ``--restore``, a full restore. This machine's speed
swings by a third within minutes (docs/performance.md, findings 18 and 69); a pair run back to
back shares the swing, so the table counts how many pairs each side won besides the medians.
Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dataset
from run import (
    MIB,
    RACY_SECONDS,
    RESULTS,
    Source,
    describe_machine,
    fresh_data,
    log,
    prepare_work,
    scratch_filesystem,
    settle_inodes,
)
from tools import Measured, RPyBackup

SIDES = ("a", "b")
STEPS = ("first", "nochange", "rerun", "restore")


def _commit(checkout: Path) -> str:
    described = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return described.stdout.strip() or "unknown"


def _pair(
    samples: dict[str, list[float]],
    step: str,
    sides: dict[str, RPyBackup],
    run: Callable[[str, RPyBackup], tuple[Measured, int]],
    a_first: bool,
) -> None:
    """``run`` the ``step`` on both sides back to back, in the given order; wall, CPU (client +
    server) and the client's peak RSS."""
    for side in SIDES if a_first else reversed(SIDES):
        # What ran before (the data's copy, the other side's restore) is written back now,
        # not during the measured step.
        os.sync()
        measured, _server_peak = run(side, sides[side])
        samples.setdefault(f"{side}_{step}", []).append(measured.seconds)
        samples.setdefault(f"{side}_{step}_cpu", []).append(measured.cpu_seconds)
        samples.setdefault(f"{side}_{step}_peak", []).append(measured.peak_rss / MIB)
        log(
            f"  {side} {step}: {measured.seconds:.2f} s ({measured.cpu_seconds:.2f} CPU-s, "
            f"peak {measured.peak_rss / MIB:.0f} MiB)"
        )


def run_round(
    work: Path,
    data: Path,
    source: Source,
    checkouts: dict[str, Path],
    index: int,
    with_restore: bool,
    samples: dict[str, list[float]],
) -> None:
    deleted_at, _ = fresh_data(source, data, f"round {index + 1}")
    sides = {side: RPyBackup(work / f"{side}-{index}", checkouts[side]) for side in SIDES}
    for side in sides.values():
        side.setup()
    a_first = index % 2 == 0

    def backup(_name: str, side: RPyBackup) -> tuple[Measured, int]:
        return side.backup(data)

    try:
        _pair(samples, "first", sides, backup, a_first)
        _pair(samples, "nochange", sides, backup, a_first)
        source.mutate(data)
        time.sleep(RACY_SECONDS)
        _pair(samples, "rerun", sides, backup, a_first)
        if with_restore:
            _restore_pair(work, data, sides, deleted_at, a_first, samples)
    finally:
        for side in sides.values():
            side.stop()
    for side in sides.values():
        shutil.rmtree(side.work)


def _restore_pair(
    work: Path,
    data: Path,
    sides: dict[str, RPyBackup],
    deleted_at: float,
    a_first: bool,
    samples: dict[str, list[float]],
) -> None:
    targets = {name: work / f"restore-{name}" for name in sides}
    settle_inodes(deleted_at)

    def restore(name: str, side: RPyBackup) -> tuple[Measured, int]:
        return side.restore(targets[name])

    _pair(samples, "restore", sides, restore, a_first)
    for name, target in targets.items():
        problems = dataset.compare(data, target / data.relative_to("/"))
        if problems:
            raise SystemExit(f"{name}'s restore differs from the source: {problems[:5]}")
        shutil.rmtree(target)


def summarize(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for step in STEPS:
        a, b = samples.get(f"a_{step}"), samples.get(f"b_{step}")
        if not a or not b:
            continue
        a_cpu, b_cpu = samples[f"a_{step}_cpu"], samples[f"b_{step}_cpu"]
        rows.append(
            {
                "step": step,
                "a_median": statistics.median(a),
                "b_median": statistics.median(b),
                "b_over_a": statistics.median(b) / statistics.median(a),
                "b_faster_in": sum(1 for x, y in zip(a, b, strict=True) if y < x),
                "pairs": len(a),
                "a_cpu_median": statistics.median(a_cpu),
                "b_cpu_median": statistics.median(b_cpu),
                "a_peak_median": statistics.median(samples[f"a_{step}_peak"]),
                "b_peak_median": statistics.median(samples[f"b_{step}_peak"]),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], commits: dict[str, str]) -> None:
    print(f"\nA = {commits['a']}, B = {commits['b']}; medians, client + server CPU, client peak\n")
    print("| step | A | B | B/A | B faster in | CPU A | CPU B | peak A | peak B |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['step']} | {row['a_median']:.2f} s | {row['b_median']:.2f} s "
            f"| {row['b_over_a']:.2f} | {row['b_faster_in']} of {row['pairs']} "
            f"| {row['a_cpu_median']:.2f} s | {row['b_cpu_median']:.2f} s "
            f"| {row['a_peak_median']:.0f} MiB | {row['b_peak_median']:.0f} MiB |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="source tree of the first side (A)")
    parser.add_argument("b", type=Path, help="source tree of the second side (B)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--scale", type=float, default=0.25, help="seeded dataset's size")
    what.add_argument("--tree", type=Path, help="a copy of this real tree instead")
    parser.add_argument("--rounds", type=int, default=8, help="pairs per step (keep it even)")
    parser.add_argument("--restore", action="store_true", help="pair full restores too")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rpybackup-ab"))
    parser.add_argument("--fs-gib", type=int, default=16, help="as for bench/run.py")
    args = parser.parse_args()
    checkouts = {"a": args.a.resolve(), "b": args.b.resolve()}
    for side, checkout in checkouts.items():
        if not (checkout / "rpybackup_core" / "__init__.py").is_file():
            parser.error(f"{side.upper()} {checkout}: not a source tree of rPyBackup")
        compileall.compile_dir(str(checkout / "rpybackup_core"), quiet=1)
    work = prepare_work(parser, args)
    with scratch_filesystem(work, args.fs_gib):
        return measure(args, work, checkouts)


def measure(args: argparse.Namespace, work: Path, checkouts: dict[str, Path]) -> int:
    data = work / "data"
    started = time.monotonic()
    machine = describe_machine()
    commits = {side: _commit(checkout) for side, checkout in checkouts.items()}
    source = Source(args.scale, args.tree)
    samples: dict[str, list[float]] = {}
    for index in range(args.rounds):
        run_round(work, data, source, checkouts, index, args.restore, samples)
    shutil.rmtree(data)
    rows = summarize(samples)
    print_table(rows, commits)
    machine["load_at_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}-ab-{commits['a']}-{commits['b']}.json"
    report = {
        "time": stamp,
        "a": {"checkout": str(checkouts["a"]), "commit": commits["a"]},
        "b": {"checkout": str(checkouts["b"]), "commit": commits["b"]},
        "source": source.label(),
        "rounds": args.rounds,
        "fs_gib": args.fs_gib,
        "machine": machine,
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
