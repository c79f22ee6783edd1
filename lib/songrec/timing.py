"""Step timings for a job's summary: seconds between successive named laps."""

import time


class Laps:
    """``lap("step")`` records the seconds since the previous lap (or since creation) under ``step``.

    ``lap.laps`` holds the rounded figures in call order; ``lap.total()`` the seconds since creation.
    """

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def __call__(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now
        return self.laps[name]

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)
