"""occoord: run many OpenCode agent tasks in parallel, with a spool directory as the interface.

The package is layered; each layer only imports the ones below it:

- ``errors``, ``state``, ``names``, ``fsutil``, ``manifest`` -- pure data and the file-name grammar
- ``spool`` -- the directory protocol (accepting manifests, task state files, transitions)
- ``opencode`` -- the HTTP client, event stream, server process and simulator (knows no spool)
- ``coordinator``, ``watcher`` -- the running job
- ``cli`` -- the command line
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "__version__"]
