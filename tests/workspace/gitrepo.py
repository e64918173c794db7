"""A test repository driven with the plain git command line, as its user would drive it."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Repo:
    """A test repository driven with the plain git command line, as its user would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=cwd or self.path, capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def write(self, name: str, text: str, *, under: Path | None = None) -> Path:
        path = (under or self.path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def commit(self, message: str, **files: str) -> str:
        for name, text in files.items():
            self.write(name, text)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def head(self, cwd: Path | None = None) -> str:
        return self.git("rev-parse", "HEAD", cwd=cwd)

    def show(self, rev: str, name: str) -> str:
        return self.git("show", f"{rev}:{name}")

    def branches(self) -> list[str]:
        return self.git("for-each-ref", "--format=%(refname:short)", "refs/heads/").splitlines()

    def status(self, cwd: Path | None = None) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all", cwd=cwd)
