"""Parsed shapes of what the OpenCode server returns.

The server's JSON carries far more than a coordinator needs and grows between releases, so each
``from_api`` keeps only the fields occoord relies on and ignores the rest. A missing or ill-typed
field we *do* rely on raises :class:`ValueError`; the client turns that into an ``ApiError`` named
``BadResponse`` so a server that changed its shape fails loudly at the boundary instead of deep in the
coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ErrorInfo", "Health", "Message", "ModelRef", "Session", "SessionStatus"]


def _obj(raw: object, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{what}: expected an object, got {type(raw).__name__}")
    return raw


def _req_str(raw: Mapping[str, Any], key: str, what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{what}: field {key!r} missing or not a string")
    return value


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _opt_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    # bool is an int subclass; a boolean timestamp would be garbage, not a number.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _time(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    value = raw.get("time")
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Health:
    """Answer of ``GET /global/health``."""

    healthy: bool
    version: str

    @classmethod
    def from_api(cls, raw: object) -> Health:
        obj = _obj(raw, "health")
        healthy = obj.get("healthy")
        if not isinstance(healthy, bool):
            raise ValueError("health: field 'healthy' missing or not a boolean")
        return cls(healthy=healthy, version=_req_str(obj, "version", "health"))


@dataclass(frozen=True)
class ModelRef:
    """A model chosen per prompt; the server wants it as ``{"providerID", "modelID"}``."""

    provider_id: str
    model_id: str

    def to_api(self) -> dict[str, str]:
        return {"providerID": self.provider_id, "modelID": self.model_id}


@dataclass(frozen=True)
class Session:
    """One OpenCode session. ``directory`` is the instance it lives in (the ``?directory=`` scope)."""

    id: str
    title: str
    directory: str
    created_ms: int | None

    @classmethod
    def from_api(cls, raw: object) -> Session:
        obj = _obj(raw, "session")
        return cls(
            id=_req_str(obj, "id", "session"),
            title=_req_str(obj, "title", "session"),
            directory=_req_str(obj, "directory", "session"),
            created_ms=_opt_int(_time(obj), "created"),
        )


@dataclass(frozen=True)
class SessionStatus:
    """An entry of ``GET /session/status`` or a ``session.status`` event: busy, retry (with the
    attempt number and the provider's complaint) or idle."""

    type: str
    attempt: int | None = None
    message: str | None = None

    @classmethod
    def from_api(cls, raw: object) -> SessionStatus:
        obj = _obj(raw, "session status")
        return cls(
            type=_req_str(obj, "type", "session status"),
            attempt=_opt_int(obj, "attempt"),
            message=_opt_str(obj, "message"),
        )


@dataclass(frozen=True)
class ErrorInfo:
    """An error attached to an assistant message or a ``session.error`` event.

    Only ``APIError`` says whether it is retryable (``data.isRetryable``) and which HTTP status the
    model provider answered; for every other name both stay ``None``.
    """

    name: str
    message: str
    retryable: bool | None = None
    status_code: int | None = None

    @classmethod
    def from_api(cls, raw: object) -> ErrorInfo:
        obj = _obj(raw, "error")
        # A nameless error is still an error: keep it visible rather than dropping it.
        name = _opt_str(obj, "name") or "UnknownError"
        data = obj.get("data")
        data = data if isinstance(data, Mapping) else {}
        retryable = data.get("isRetryable")
        return cls(
            name=name,
            message=_opt_str(data, "message") or _opt_str(obj, "message") or "",
            retryable=retryable if isinstance(retryable, bool) else None,
            status_code=_opt_int(data, "statusCode"),
        )


@dataclass(frozen=True)
class Message:
    """One item of ``GET /session/{id}/message``: the ``info`` header plus the text of its parts.

    Tool calls, reasoning and step markers are dropped: the coordinator only needs to know how the
    turn ended (``finish``, ``error``, ``completed_ms``) and what the agent said last.
    """

    id: str
    session_id: str
    role: str
    finish: str | None
    error: ErrorInfo | None
    created_ms: int | None
    completed_ms: int | None
    text: str

    @property
    def completed(self) -> bool:
        return self.completed_ms is not None or self.finish is not None

    @classmethod
    def from_api(cls, raw: object) -> Message:
        obj = _obj(raw, "message")
        info = _obj(obj.get("info"), "message info")
        parts = obj.get("parts", [])
        if not isinstance(parts, list):
            raise ValueError("message: field 'parts' is not a list")
        texts: list[str] = []
        for part in parts:
            # "ignored" text parts were discarded by OpenCode itself; they are not what the agent said.
            if isinstance(part, Mapping) and part.get("type") == "text" and not part.get("ignored"):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
        error_raw = info.get("error")
        time = _time(info)
        return cls(
            id=_req_str(info, "id", "message info"),
            session_id=_req_str(info, "sessionID", "message info"),
            role=_req_str(info, "role", "message info"),
            finish=_opt_str(info, "finish"),
            error=ErrorInfo.from_api(error_raw) if error_raw is not None else None,
            created_ms=_opt_int(time, "created"),
            completed_ms=_opt_int(time, "completed"),
            text="".join(texts),
        )
