"""The spool protocol v1 (docs/PROTOCOL.md): names, states, task files, runs, accepting, recovery.

Knows nothing of OpenCode, the engine or the command line; imports only ``manifest`` and the
shared ``errors`` and ``fsutil``.
"""
