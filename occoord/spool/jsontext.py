"""The spool's big JSON files (``run.json``, ``summary.json``) as text: indented, one line per row.

json's indenting encoder is pure Python and builds a list of every fragment before joining them:
for 10,000 tasks that is tenths of a second and tens of MB, and while a worker thread accepts a
manifest it holds the GIL in 5 ms slices against the loop (whose every syscall then waits for a
slice to end). Here the containers above the rows are laid out as ``json.dumps(indent=1)`` would,
and each row of a list of objects is one line from the C encoder; the GIL is offered every few
hundred rows. The text is valid JSON that reads back as the same document.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["dumps_rows"]

_YIELD_EVERY = 256  # rows between offers of the GIL (a few hundred microseconds of work)


def dumps_rows(obj: Any) -> bytes:
    parts: list[str] = []
    _write(obj, 0, parts)
    parts.append("\n")
    return "".join(parts).encode()


def _write(obj: Any, depth: int, out: list[str]) -> None:
    pad = " " * (depth + 1)
    if isinstance(obj, dict) and obj:
        items = []
        for key, value in obj.items():
            inner: list[str] = []
            _write(value, depth + 1, inner)
            items.append(f"{pad}{json.dumps(str(key))}: {''.join(inner)}")
        out.append("{\n" + ",\n".join(items) + "\n" + " " * depth + "}")
    elif isinstance(obj, list) and obj and all(isinstance(item, dict) for item in obj):
        rows = []
        for n, item in enumerate(obj, 1):
            rows.append(pad + json.dumps(item, separators=(", ", ": ")))
            if n % _YIELD_EVERY == 0:
                time.sleep(0)  # let the loop's thread in (see the module's note)
        out.append("[\n" + ",\n".join(rows) + "\n" + " " * depth + "]")
    else:
        out.append(json.dumps(obj, indent=1).replace("\n", "\n" + " " * depth))
