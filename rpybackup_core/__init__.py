"""rPyBackup core: repository, crypto, chunking, protocol, server and client (headless)."""

__version__ = "0.1.0"
