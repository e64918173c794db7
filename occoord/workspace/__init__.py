"""The git layer: a worktree and a branch per task attempt, results as commits (issue 12).

It knows nothing of the spool, the engine, OpenCode or the command line, and runs the ``git``
command line (argv lists, no shell; see ``git`` for the environment). Every function is
synchronous and blocking; the engine calls them off its event loop (``asyncio.to_thread``) and
serializes the calls for one repository itself (git's locks make concurrent ``worktree add`` or
commits in one repository fail); different repositories may proceed in parallel. Failures are
:class:`occoord.errors.GitError` (``MergeConflict`` and ``DirtyWorktree`` are subclasses).

One attempt, as the engine drives it (``repo`` is any folder of the repository, e.g. from
``git.repo_root(spec.directory)``; the ids are the run's and the task's):

1. names: ``names.branch_name(run, task, attempt)`` and
   ``names.worktree_path(root, run, task, attempt)`` (root: an option, default
   ``names.default_root()``). Derived, so a restarted watcher finds them again.
2. start commit: no dependency -> the task's ``base_commit`` (resolved once, at acceptance, by the
   manifest); dependencies -> ``merge.start_commit(repo, [their result commits], message=...)``,
   which raises ``MergeConflict`` (``.files``) when they do not merge: a failure before any session,
   not worth a retry. Deterministic, so computing it again after a crash gives the same commit.
3. ``worktrees.ensure_worktree(repo, path, branch, start)`` -> ``Worktree``: creates it, or reuses
   or repairs what a crash left; never a second branch. The session's directory is
   ``path / relative``, ``relative`` being the task's directory relative to the repository's top.
4. when the task is done: ``results.commit_all(path, message, branch=branch)`` -> the result
   commit; ``results.patch(repo, start, result)`` (bytes, for ``results/<task>.diff``) and
   ``results.diff_stats(repo, start, result)`` -> ``DiffStats(files, insertions, deletions)``.
5. ``worktrees.remove_worktree(repo, path, force=...)`` per ``keep_worktree``; the branch stays.

``clean.clean_runs(run_ids, root=..., repos=..., branches=..., force=...)`` is ``occoord clean``.

Modules: ``git`` (running git, errors, ``repo_root``, ``resolve``, ``is_ancestor``,
``dirty_paths``), ``names``, ``worktrees``, ``results``, ``merge``, ``clean``.
"""
