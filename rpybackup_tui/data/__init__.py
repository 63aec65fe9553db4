"""What the console shows, computed without textual: every module here is plain Python."""
