"""occoord: run many OpenCode agent tasks in parallel, with a spool directory as the interface.

The package is layered; each layer only imports the ones below it:

- ``errors``, ``state``, ``names``, ``fsutil``, ``manifest*``, ``journal`` -- data, the file-name
  grammar, filesystem primitives
- ``taskfiles``, ``reconcile``, ``spool``, ``accept``, ``recovery``, ``requeue``, ``cancel``,
  ``status``, ``summary`` -- the directory protocol (manifests in, task state files, crash repair)
- ``opencode`` -- the HTTP client, event stream, outcomes, permission policy, server process and
  simulator (knows no spool)
- ``watcher``, ``runstate``, ``attempts``, ``prompting``, ``hooks``, ``endings``, ``sessions``,
  ``coordinator``, ``service`` -- the running job
- ``cli``, ``cli_common``, ``cli_run``, ``plan``, ``follow`` -- the command line
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "__version__"]
