"""The progress line: done / total, percent, rate and ETA, logged every few seconds.

The total is the number of records the job has to settle (predicted or failed) after
listing, de-duplication and backfill selection. `NoteTotal` counts them in the pipeline and
hands the count to each worker process as a side input, so the line shows it once the
inputs are listed; the records wait for it in lists of NOTE_BATCH (one element per list
where they are held, not one per record). Done is what this process settled:
encode/decode/read failures (`settled`) and the outcomes of its requests (`add`). When the
job runs in one process (DirectRunner's default) that is the whole job; when several
processes share it (Dataflow, multi-processing), each logs its own done count beside the
job's total, without a percent or an ETA it cannot know.
"""
import logging
import threading
import time
from typing import Optional

import apache_beam as beam

PROGRESS_EVERY_S = 5.0
NOTE_BATCH = 256

_LOG = logging.getLogger("batch_predict")


def eta_text(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(done: int, failed: int, total: Optional[int], elapsed_s: float,
                  requests: int, retries: int, whole_job: bool = True) -> str:
    """One progress line. With a total for the whole job: done/total, percent and ETA."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        head = f"{done} done"
    elif whole_job:
        percent = 100.0 * done / total if total else 100.0
        eta = eta_text((total - done) / rate) if rate > 0 else "unknown"
        head = f"{done}/{total} done ({percent:.1f}%)"
        return (f"progress: {head}, {failed} failed, {rate:.1f} img/s, ETA {eta}, "
                f"{requests} requests, {retries} retries")
    else:
        head = f"{done} done by this worker of {total} in the job"
    return (f"progress: {head}, {failed} failed, {rate:.1f} img/s, {requests} requests, "
            f"{retries} retries")


class Progress:
    """Process-wide totals and a progress line every `every_s` (PROGRESS_EVERY_S)."""

    def __init__(self, every_s: Optional[float] = None):
        self._every_s = every_s
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last = self._started
        self._job: Optional[str] = None
        self.total: Optional[int] = None
        self.whole_job = True
        self.predicted = self.failed = self.requests = self.retries = 0

    def start(self, job: str, total: int, whole_job: bool):
        """The job's total, once its inputs are listed; a new job starts from zero."""
        with self._lock:
            if job != self._job:
                self._job = job
                self._started = self._last = time.monotonic()
                self.predicted = self.failed = self.requests = self.retries = 0
            self.total, self.whole_job = total, whole_job

    def settled(self, failed: int):
        """Records that failed before a request (read, decode, encode)."""
        with self._lock:
            self.failed += failed
            self._maybe_log()

    def add(self, outcomes, stats):
        """Count one finished request; log a progress line when one is due."""
        with self._lock:
            for outcome in outcomes:
                if outcome.ok:
                    self.predicted += 1
                else:
                    self.failed += 1
            self.requests += stats.requests
            self.retries += sum(stats.retries.values())
            self._maybe_log()

    def _maybe_log(self):
        now = time.monotonic()
        every_s = PROGRESS_EVERY_S if self._every_s is None else self._every_s
        if now - self._last < every_s:
            return
        self._last = now
        _LOG.info(progress_line(self.predicted + self.failed, self.failed, self.total,
                                now - self._started, self.requests, self.retries,
                                self.whole_job))


PROGRESS = Progress()


class _NoteTotalFn(beam.DoFn):
    def __init__(self, job: str, whole_job: bool):
        self._job = job
        self._whole_job = whole_job
        self._noted = False

    def process(self, records, total):
        if not self._noted:
            PROGRESS.start(self._job, total, self._whole_job)
            self._noted = True
        yield from records


class NoteTotal(beam.PTransform):
    """Records -> the same records; their count reaches every worker's progress line.
    `job`: the run id; `whole_job`: one process runs the whole job, so its done count is
    the job's."""

    def __init__(self, job: str, whole_job: bool):
        super().__init__()
        self._job = job
        self._whole_job = whole_job

    def expand(self, records):
        batches = records | "Batch" >> beam.BatchElements(min_batch_size=NOTE_BATCH,
                                                          max_batch_size=NOTE_BATCH)
        total = (batches
                 | "Sizes" >> beam.Map(len)
                 | "Count" >> beam.CombineGlobally(sum).without_defaults())
        return batches | "Note" >> beam.ParDo(_NoteTotalFn(self._job, self._whole_job),
                                              beam.pvalue.AsSingleton(total, default_value=0))
