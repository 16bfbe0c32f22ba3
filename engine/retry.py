"""The retry policy: which failures are retried, and how long to wait before the next try."""
import dataclasses
import random
from typing import Optional

RETRYABLE_STATUSES = frozenset((429, 500, 502, 503, 504))
MAX_RETRY_AFTER_S = 300.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, honouring `Retry-After`."""
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def is_retryable(self, status: Optional[int]) -> bool:
        return status in RETRYABLE_STATUSES

    def delay(self, retry: int, retry_after_s: Optional[float] = None,
              rng: random.Random = random) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** retry))
        wait = rng.uniform(0, cap)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, MAX_RETRY_AFTER_S))
        return wait


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """A `Retry-After` header in seconds (HTTP dates are rare from Google APIs: ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
