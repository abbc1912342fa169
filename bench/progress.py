"""Progress bars for the long benchmark runs.

Bars are drawn on the controlling terminal (``/dev/tty``), not on stdout or stderr:
pytest captures those, and a bar should show during ``pytest bench/`` without
``-s``.  Where there is no terminal (CI, cron) nothing is drawn.  The compiled load
client draws the same bar itself (``--progress LABEL``).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TextIO


def _open_tty() -> TextIO | None:
    try:
        return open("/dev/tty", "w")
    except OSError:
        return None


class Progress:
    """``with Progress("crash", 50, "kills") as bar: ... bar.update()``."""

    def __init__(self, label: str, total: float, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0.0
        self.start = time.monotonic()
        self._drawn = 0.0
        self._tty = _open_tty()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: float) -> None:
        """Set the units done so far."""
        self.done = done
        self._draw(last=False)

    def _draw(self, last: bool) -> None:
        if self._tty is None:
            return
        now = time.monotonic()
        if not last and now - self._drawn < 0.2:
            return
        self._drawn = now
        f = min(1.0, self.done / self.total) if self.total else 1.0
        fill = int(f * 30)
        secs = now - self.start
        rate = self.done / secs if secs > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and not last else 0.0
        self._tty.write(f"\r\033[K  {self.label} [{'#' * fill}{'-' * (30 - fill)}] "
                        f"{f * 100:3.0f}% {self.done:.0f}/{self.total:.0f} {self.unit} "
                        f"{secs:6.1f}s" + (f" eta {eta:.0f}s" if eta else "")
                        + ("\n" if last else ""))
        self._tty.flush()

    def close(self) -> None:
        """Draw the final state and release the terminal."""
        if self._tty is not None:
            self._draw(last=True)
            self._tty.close()
            self._tty = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
