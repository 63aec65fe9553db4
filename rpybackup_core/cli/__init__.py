"""The rpybackup-core command line (see the CLI contract in docs/ARCHITECTURE.md)."""
