"""occoord: run many OpenCode agent tasks in parallel, with a spool directory as the interface.

The package is layered; each layer imports only the ones below it (docs/ARCHITECTURE.md; enforced
by the import-linter contracts in pyproject.toml):

- ``cli`` -- the command line and everything it prints
- ``engine`` -- the running job: the coordinator loop, attempts, dispatch, settling, wiring
- ``spool`` -- the directory protocol (docs/PROTOCOL.md); ``opencode`` -- the server's client and
  process; ``sim`` -- the OpenCode simulator. None of the three knows the others.
- ``manifest`` -- manifests v1: model, checks, parsing, schema
- ``errors``, ``fsutil``, ``backoff`` -- shared by all
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "__version__"]
