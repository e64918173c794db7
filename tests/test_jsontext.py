"""The layout of run.json and summary.json: indented, one line per task, and the same document json
itself reads."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from occoord.spool.jsontext import dumps_rows

_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_task = st.dictionaries(st.text(max_size=8), _value, max_size=5)


@given(
    tasks=st.lists(_task, max_size=5),
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "tasks"), _value, max_size=4),
)
def test_the_text_reads_back_as_the_same_document(tasks: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    summary = {"protocol": 1, "tasks": tasks, **extra}
    text = dumps_rows(summary)
    assert json.loads(text) == summary
    assert text.endswith(b"}\n")


def test_each_task_is_one_line() -> None:
    tasks = [
        {"task": f"t{i}", "state": "done", "usage": {"cost": 0.1, "tokens": {"total": 3}}} for i in range(3)
    ]
    text = dumps_rows({"protocol": 1, "run": "r", "tasks": tasks, "counts": {"done": 3}}).decode()
    lines = text.splitlines()
    for i in range(3):
        [line] = [entry for entry in lines if f'"task": "t{i}"' in entry]
        assert json.loads(line.strip().rstrip(",")) == tasks[i]
    assert ' "counts": {' in lines
