"""Logging and progress for the jobs: one log format, a throttled ``done/total, rate,
ETA`` logger, and durations people can read.  Ray-free."""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

__all__ = ["ProgressLogger", "format_duration", "setup_logging"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = "INFO") -> None:
    """Configure the root logger once (stderr, timestamps); later calls only change the
    level.  Chatty client libraries are kept at WARNING."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "s3fs", "urllib3", "aiobotocore", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def format_duration(seconds: float | None) -> str:
    """``3725.2`` -> ``"1h02m05s"``; ``None``/inf/nan -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class ProgressLogger:
    """Log ``done/total``, items/s and ETA at most every ``every_s`` seconds.

    >>> p = ProgressLogger(total=1000, what="images", every_s=10)
    >>> for batch in batches: p.update(len(batch))
    >>> summary = p.finish()   # {"done", "total", "seconds", "per_second"}

    ``clock`` is injectable for tests.  Rates are averages since the start, which stay
    steady while Ray warms up its actors."""

    def __init__(self, total: int | None = None, *, what: str = "items", every_s: float = 10.0,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "") -> None:
        self.total = total
        self.what = what
        self.every_s = float(every_s)
        self.logger = logger or log
        self.clock = clock
        self.prefix = prefix
        self.done = 0
        self.start = clock()
        self._last = self.start

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        el = self.elapsed
        return self.done / el if el > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def message(self) -> str:
        head = f"{self.prefix}{self.done}"
        if self.total is not None:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            head += f"/{self.total} {self.what} ({pct:.1f}%)"
        else:
            head += f" {self.what}"
        msg = f"{head}, {self.rate:.1f} {self.what}/s, elapsed {format_duration(self.elapsed)}"
        if self.total is not None:
            msg += f", ETA {format_duration(self.eta_s)}"
        return msg

    def update(self, n: int = 1) -> bool:
        """Count ``n`` more items; returns True when it logged."""
        self.done += int(n)
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(self.message())
            return True
        return False

    def finish(self) -> dict[str, Any]:
        self.logger.info(self.message())
        return {"done": self.done, "total": self.total, "seconds": round(self.elapsed, 3),
                "per_second": round(self.rate, 3)}
