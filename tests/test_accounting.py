"""The run's accounting: every Stage and SkipReason is one counter, and the summary adds up
all of them (`inputs == predicted + failed + skipped`)."""
import pytest

from core.records import SkipReason, Stage, accounting, dead_letter


def test_every_stage_and_reason_reaches_the_summary():
    counts = {stage.counter: i + 1 for i, stage in enumerate(Stage)}
    counts.update({reason.counter: 10 * (i + 1) for i, reason in enumerate(SkipReason)})
    counts.update({"inputs": 999, "retries_http_429": 7, "failed_stray": 1000})
    summary = accounting(counts)
    assert summary["failed_by_stage"] == {s.value: i + 1 for i, s in enumerate(Stage)}
    assert summary["failed"] == sum(range(1, len(Stage) + 1))
    assert summary["skipped_by_reason"] == {
        r.value: 10 * (i + 1) for i, r in enumerate(SkipReason)}
    assert summary["skipped"] == 10 * sum(range(1, len(SkipReason) + 1))


def test_stages_zero_counts_are_left_out_of_the_breakdown():
    summary = accounting({Stage.PARSE.counter: 2, Stage.READ.counter: 0})
    assert summary["failed_by_stage"] == {"parse": 2} and summary["failed"] == 2
    assert summary["skipped"] == 0 and summary["skipped_by_reason"] == {}


def test_counter_names_are_the_documented_ones():
    assert [s.counter for s in Stage] == [
        "failed_read", "failed_decode", "failed_encode", "failed_predict", "failed_parse"]
    assert SkipReason.DUPLICATE_KEY.counter == "skipped_duplicate_key"


def test_a_dead_letter_names_a_known_stage_only():
    assert dead_letter("k", Stage.DECODE, "bad")["stage"] == "decode"
    with pytest.raises(ValueError):
        dead_letter("k", "decoding", "bad")
