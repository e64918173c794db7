"""The one retry policy: exponential backoff with a cap, shared by every layer that retries."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays ``base, base*factor, base*factor**2, ...`` capped at ``cap``; ``attempt`` is 1-based."""

    base: float
    cap: float
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        if self.base <= 0:
            return 0.0
        exponent = max(0, attempt - 1)
        # Past this the product overflows float long after it passed any sane cap.
        if exponent > 64:
            return float(self.cap)
        return float(min(self.cap, self.base * self.factor**exponent))
