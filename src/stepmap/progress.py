"""A one-line progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int | None, *, stream=None, enabled: bool | None = None,
                 label: str = "items"):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label = total, label
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False
        self.last: tuple[int, int] | None = None

    def update(self, done: int, failed: int = 0, *, force: bool = False) -> None:
        if not self.enabled:
            return
        self.last = (done, failed)
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        self.stream.write("\r" + self.render(done, failed, now - self.started) + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def render(self, done: int, failed: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{done:,}"
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(fraction * 30)
            eta = (self.total - done) / rate if rate > 0 else None
            text = (f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self.total:,} {self.label}"
                    f"  {rate:,.1f}/s  ETA {_clock(eta)}")
        else:
            text += f" {self.label}  {rate:,.1f}/s"
        if failed:
            text += f"  {failed:,} failed"
        return text

    def close(self) -> None:
        if self.enabled and self.last is not None:
            self.update(*self.last, force=True)  # the final state, even if throttled
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
