"""Throughput over time for the run report: records counted per 0.1 s in bounded state, then
drawn in bins of a round width (0.1 s on a 2-second run, 2 min on a 2-hour one)."""
import collections
import math
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_TIME_BINS = 120
TARGET_TIME_BINS = 80
# Time bins: the finest is 0.1 s; the widths read as round numbers on a time axis.
TIME_STEP_MS = 100
MAX_TIME_KEYS = 200_000
BIN_WIDTHS_MS = (100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 120_000,
                 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000,
                 21_600_000, 43_200_000, 86_400_000)


class TimeCounts:
    """Records finished per time step: 0.1 s steps, ten times wider whenever more than
    MAX_TIME_KEYS steps are held, so a run of any length keeps bounded state."""

    def __init__(self, step_ms: int = TIME_STEP_MS):
        self.step_ms = step_ms
        self.counts: collections.Counter = collections.Counter()

    def add_us(self, micros: np.ndarray):
        """Count records finished at these times (microseconds since the epoch)."""
        steps, n = np.unique(micros // (self.step_ms * 1000), return_counts=True)
        self.counts.update(dict(zip(steps.tolist(), n.tolist())))
        while len(self.counts) > MAX_TIME_KEYS:
            self.coarsen()

    def span_s(self) -> float:
        """Seconds from the start of the first step counted to the end of the last."""
        if not self.counts:
            return 0.0
        return (max(self.counts) - min(self.counts) + 1) * self.step_ms / 1000

    def coarsen(self):
        wider = collections.Counter()
        for step, n in self.counts.items():
            wider[step // 10] += n
        self.step_ms, self.counts = self.step_ms * 10, wider

    def merged(self, other: "TimeCounts") -> "TimeCounts":
        both = TimeCounts(max(self.step_ms, other.step_ms))
        for part in (self, other):
            factor = both.step_ms // part.step_ms
            for step, n in part.counts.items():
                both.counts[step // factor] += n
        return both


def times_us(column: pa.Array) -> np.ndarray:
    """The non-null timestamps of a column as microseconds since the epoch."""
    present = pc.drop_null(column)
    if not len(present):
        return np.empty(0, dtype=np.int64)
    return pc.cast(present, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def bin_width_ms(times: TimeCounts, span_ms: int) -> int:
    """The narrowest round bin width (a multiple of the counts' step) that draws `span_ms`
    in at most TARGET_TIME_BINS bins."""
    for width in BIN_WIDTHS_MS:
        if width % times.step_ms == 0 and span_ms / width <= TARGET_TIME_BINS:
            return width
    days = math.ceil(span_ms / TARGET_TIME_BINS / BIN_WIDTHS_MS[-1])
    return days * BIN_WIDTHS_MS[-1]


def bin_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def time_series(times: TimeCounts) -> Tuple[float, List[Tuple[float, float]]]:
    """(bin width s, [(seconds since the first record to the middle of the bin, records per
    second)]) in at most
    MAX_TIME_BINS bins of a round width: 0.1 s on a 2-second run, 2 min on a 2-hour one."""
    if not times.counts:
        return times.step_ms / 1000, []
    start, end = min(times.counts), max(times.counts)
    width = bin_width_ms(times, (end - start + 1) * times.step_ms) // times.step_ms
    bins = [0] * ((end - start) // width + 1)
    for step, n in times.counts.items():
        bins[(step - start) // width] += n
    seconds = width * times.step_ms / 1000
    spans = [seconds] * len(bins)
    spans[-1] = ((end - start) % width + 1) * times.step_ms / 1000  # the last bin's run part
    if len(bins) > 1 and spans[-1] < seconds / 2:  # too short to give a rate: joins the one
        bins[-2:], spans[-2:] = [sum(bins[-2:])], [sum(spans[-2:])]  # before it
    return seconds, [(i * seconds + span / 2, n / span)  # at the middle of the time it counts
                     for i, (n, span) in enumerate(zip(bins, spans))]
