"""`rpybackup-core demo`: the embedded default, no configuration by hand."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ..demo import run_demo
from ..errors import IntegrityError, UsageError
from .output import print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a local server and client on demo data, end to end")
    p.add_argument("--dir", help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.dir:
        workdir = Path(args.dir).resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise UsageError(f"{workdir} is not empty")
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="rpybackup-demo-"))
    say = (lambda _text: None) if args.json else (lambda text: stdout.print(text, markup=False))
    try:
        report = run_demo(workdir, say)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print_json(
            {
                "workdir": str(workdir),
                "snapshots": [snap.to_json() for snap in report.snapshots],
                "first": report.first.to_json(),
                "second": report.second.to_json(),
                "restored": report.restored.to_json(),
                "identical": not report.differences,
            }
        )
    if report.differences:
        raise IntegrityError("restored tree differs: " + "; ".join(report.differences[:5]))
    if not args.json:
        stdout.print(
            "restore verified: the restored tree is identical to the source "
            "(content, modes, mtimes, symlinks)"
        )
        if args.keep or args.dir:
            stdout.print(f"work directory kept at {workdir}")
    return 0
