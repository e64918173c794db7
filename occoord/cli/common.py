"""Options and helpers shared by the command modules (``main`` and ``running``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from occoord.spool.layout import Spool

__all__ = ["open_spool", "spool_option"]

F = TypeVar("F", bound=Callable[..., Any])


def spool_option(func: F) -> F:
    """Every subcommand takes ``--spool`` (env OCCOORD_SPOOL, default ./spool)."""
    return click.option(
        "--spool",
        "spool_dir",
        envvar="OCCOORD_SPOOL",
        default="spool",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Spool directory (env OCCOORD_SPOOL).",
    )(func)


def open_spool(spool_dir: Path, *, create: bool = True) -> Spool:
    spool = Spool(spool_dir)
    if not create:
        spool.check()
    return spool.init()
