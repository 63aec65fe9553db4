# rPyBackup recipes. `just setup` once, then the others.
venv := ".venv"
py := venv / "bin/python"

setup:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e '.[dev]'

test *ARGS:
    {{py}} -m pytest -q {{ARGS}}

# The long robustness profile: 100+ daemon kills, 100,000+ fuzz cases, fresh seeds (~20 min).
soak *ARGS:
    RPYBACKUP_SOAK=1 {{py}} -m pytest -q --timeout 3600 tests/robustness {{ARGS}}

demo:
    {{venv}}/bin/rpybackup-core demo

# Run a server in the foreground with the config in $RPYBACKUP_SERVER_CONFIG (or the XDG default).
serve:
    {{venv}}/bin/rpybackup-core serve

lint:
    {{venv}}/bin/ruff check rpybackup_core rpybackup_tui tests bench
    {{venv}}/bin/ruff format --check rpybackup_core rpybackup_tui tests bench
    {{venv}}/bin/mypy rpybackup_core

# Against restic and borg on the seeded dataset (~7 min); `just bench --tree DIR` on a real tree.
bench *ARGS:
    {{py}} bench/run.py {{ARGS}}

# The server's peak memory for a commit and a prune as a client's chunk count grows (~2 min).
bench-server-memory:
    {{py}} bench/server_memory.py

# Two checkouts in alternating pairs on the same data: `just ab /tmp/a /tmp/b --tree /usr/share`.
ab *ARGS:
    {{py}} bench/ab.py {{ARGS}}
