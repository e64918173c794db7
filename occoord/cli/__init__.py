"""The command line: click commands and everything they print."""
