"""The restore speed the app's time estimates use: seconds per megapixel per network pass, per model,
measured on this app's own restores (``restore_service.estimate_seconds`` reads it).

One restore is a poor measure on its own: a fixed cost per call (Python, the scheduler, tiling) is
spread over its pixels, so a 1x1 restore that took 0.1 s read as 100,000 s per megapixel, and the next
user's 1.5-s restore was announced as "about 98 min". So restores under ``MIN_PIXELS`` are not
measured, and the speed is the median of a model's last ``KEEP`` measurements: one odd restore (a
cold cache, a machine busy with something else) moves it by one rank, not by its size.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["KEEP", "MIN_PIXELS", "SpeedMeter"]

MIN_PIXELS = 64 * 64  # smaller restores are mostly fixed cost: not measured
KEEP = 7  # measurements per model the median is taken over


class SpeedMeter(dict[str, float]):
    """model path -> seconds per megapixel per network pass (a dict, so an estimate reads
    ``speed.get(path, default)``); ``record`` adds a measured restore and sets the model's entry to the
    median of its recent measurements. Setting an entry directly sets the speed (and forgets the
    measurements it replaces)."""

    def __init__(self) -> None:
        super().__init__()
        self._recent: dict[str, deque[float]] = {}

    def record(self, path: str, seconds: float, pixels: int, passes: int) -> bool:
        """Add one restore of ``pixels`` input pixels with ``passes`` network passes that took ``seconds``;
        False (nothing changes) when it is under ``MIN_PIXELS`` or its numbers are not usable."""
        if pixels < MIN_PIXELS or passes < 1 or not seconds > 0:
            return False
        recent = self._recent.setdefault(path, deque(maxlen=KEEP))
        recent.append(seconds / passes / (pixels / 1e6))
        super().__setitem__(path, statistics.median(recent))
        return True

    def __setitem__(self, path: str, value: float) -> None:
        self._recent.pop(path, None)
        super().__setitem__(path, value)

    def clear(self) -> None:
        self._recent.clear()
        super().clear()
