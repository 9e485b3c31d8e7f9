"""The last N WARNINGs of the ``anyattn`` logger, kept in memory for ``anyattn doctor --bundle``.

Standard library only (``import anyattn`` may install it at start-up: it costs one handler).
Nothing is written anywhere: a bug-report bundle made in the same process includes them.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Deque, Dict, List, Optional

DEFAULT_KEEP = 50


class RecentWarnings(logging.Handler):
    """Keeps the last ``keep`` records at WARNING or above (a bounded deque: no growth)."""

    def __init__(self, keep: int = DEFAULT_KEEP):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep <= 0:
            raise ValueError(f"keep: expected a positive int, got {keep!r}")
        super().__init__(level=logging.WARNING)
        self.records: Deque[Dict[str, str]] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            msg = str(record.msg)
        self.records.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                             "level": record.levelname, "logger": record.name, "message": msg})


_HANDLER: Optional[RecentWarnings] = None


def install(keep: int = DEFAULT_KEEP, logger_name: str = "anyattn") -> RecentWarnings:
    """Attach the handler to the ``anyattn`` logger once (idempotent); returns it."""
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = RecentWarnings(keep)
        logging.getLogger(logger_name).addHandler(_HANDLER)
    return _HANDLER


def recent(n: Optional[int] = None) -> List[Dict[str, str]]:
    """The kept warnings, oldest first (the last ``n`` when given); [] when never installed."""
    if _HANDLER is None:
        return []
    out = list(_HANDLER.records)
    return out[-n:] if n else out
