"""Progress and cancel callbacks: the engine's only link to a user interface.

Every long-running core function takes an optional ``progress`` argument, a
:class:`Progress` (or ``None``).  It carries three plain callables so that a
notebook, a CLI or a QGIS feedback object can drive it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled

log = logging.getLogger("soilssl")


@dataclass
class Progress:
    on_progress: Optional[Callable[[float], None]] = None  # percent 0..100
    is_cancelled: Optional[Callable[[], bool]] = None
    on_info: Optional[Callable[[str], None]] = None
    _span: tuple = field(default=(0.0, 100.0), repr=False)

    def set(self, fraction: float) -> None:
        """Report progress as a fraction (0..1) of the current span."""
        if self.on_progress is not None:
            lo, hi = self._span
            self.on_progress(lo + (hi - lo) * max(0.0, min(1.0, fraction)))

    def info(self, message: str) -> None:
        log.info(message)
        if self.on_info is not None:
            self.on_info(message)

    def cancelled(self) -> bool:
        return bool(self.is_cancelled is not None and self.is_cancelled())

    def check(self) -> None:
        """Raise :class:`Cancelled` when the user asked to stop."""
        if self.cancelled():
            raise Cancelled("Cancelled by the user; no output was written.")

    def sub(self, start: float, stop: float) -> "Progress":
        """A child reporting into [start, stop] (fractions) of this span."""
        lo, hi = self._span
        width = hi - lo
        return Progress(self.on_progress, self.is_cancelled, self.on_info,
                        (lo + width * start, lo + width * stop))


def ensure(progress: Optional[Progress]) -> Progress:
    return progress if progress is not None else Progress()
