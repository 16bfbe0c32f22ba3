"""SelectTodo, the job's one keyed step: one record per key, --limit, backfill selection and
the --passthrough_fields trim together, every record counted once."""
import pickle

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.records import accounting, ImageRef, SkipReason
from pipeline.config import new_run_id
from tests.helpers import counters, LOCAL_RUNNER
from transforms.limit import _LastKeyFn
from transforms.listing import MatchedEntry
from transforms.read import Outputs
from transforms.select import _GatherKey, Row, SelectTodo


def entry(key, listed):
    """An image entry as ReadImages matches it."""
    return key, listed


def test_one_record_per_key_then_limit_then_existing_with_only_passthrough_values(tmp_path):
    out = str(tmp_path / "pred")
    pq.write_table(pa.table({"key": ["d"]}), f"{out}-{new_run_id()}-00000-of-00001.parquet")
    rows = [ImageRef("a", "/i/a.jpg", fields={"id": "a", "c": "late", "big": "x" * 1000},
                     origin="/r.csv:3"),
            ImageRef("a", "/i/a2.jpg", fields={"c": "early"}, origin="/r.csv:2"),
            ImageRef("d", "/i/d.jpg", fields={"c": "dd"}, origin="/r.csv:4"),
            ImageRef("e", "/i/e.jpg", fields={"c": "ee"}, origin="/r.csv:5")]
    images = [entry("b", MatchedEntry(7)), entry("b", MatchedEntry(7)),  # two patterns matched it
              entry("a", MatchedEntry(5)),  # a row names it too: the row wins
              entry("c", MatchedEntry(None, SkipReason.HIDDEN)),
              entry("f", MatchedEntry(None, error="cannot list folder"))]
    p = TestPipeline(runner=LOCAL_RUNNER)
    inputs = Outputs(images=p | "Images" >> beam.Create(images),
                     rows=p | "Rows" >> beam.Create(rows),
                     failed=p | "NoFailures" >> beam.Create([]))
    todo = inputs | SelectTodo(passthrough=("c", "n"), limit=3, existing_output=out)
    # record keys a, b, d, e: the first 3 are a, b, d; d is already written
    assert_that(todo.refs, equal_to([
        ImageRef("a", "/i/a2.jpg", fields={"c": "early", "n": None}, origin="/r.csv:2"),
        ImageRef("b", "b", size=7, fields={"c": None, "n": None})]), label="refs")
    assert_that(todo.failed | beam.Map(lambda d: (d["key"], d["stage"], d["error"])),
                equal_to([("f", "read", "cannot list folder")]), label="failed")
    result = p.run()
    result.wait_until_finish()
    counts = counters(result)
    assert counts == {"inputs": 4, "skipped_hidden": 1, "failed_read": 1,
                      "skipped_duplicate_key": 2, "skipped_over_limit": 1,
                      "skipped_existing": 1}
    # 4 image entries (b, a, c, f) + 4 rows, of which 2 are predicted
    assert counts["inputs"] + len(rows) == 2 + counts["failed_read"] + accounting(counts)["skipped"]


def test_without_passthrough_fields_nothing_of_the_row_is_kept(tmp_path):
    rows = [ImageRef("a", "/i/a.jpg", fields={"c": "x"}, origin="/r.csv:2")]
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        inputs = Outputs(images=p | "NoImages" >> beam.Create([]),
                         rows=p | "Rows" >> beam.Create(rows),
                         failed=p | "NoFailures" >> beam.Create([]))
        todo = inputs | SelectTodo()
        assert_that(todo.refs, equal_to([ImageRef("a", "/i/a.jpg", origin="/r.csv:2")]))


def test_the_limit_is_the_nth_smallest_distinct_key_however_often_a_key_comes():
    fn = _LastKeyFn(3)
    parts = []
    for keys in (["b", "b", "b", "a"], ["a", "b", "z"], ["c"] * 200 + ["y"]):
        acc = fn.create_accumulator()
        for key in keys:
            acc = fn.add_input(acc, key)
        parts.append(acc)
    assert fn.extract_output(fn.merge_accumulators(parts)) == "c"
    assert fn.extract_output(fn.add_input(fn.create_accumulator(), "q")) == "q"  # fewer than N
    assert fn.extract_output(fn.create_accumulator()) is None


def test_merging_many_accumulators_keeps_the_smallest():
    fn = _LastKeyFn(2)
    merged = fn.merge_accumulators([[f"{b:04d}-{i}" for i in range(2)] for b in range(5000)])
    assert merged == ["0000-0", "0000-1"]


def test_an_entry_two_patterns_matched_differently_is_read_whichever_comes_first():
    hidden, read = MatchedEntry(None, SkipReason.HIDDEN), MatchedEntry(5)
    for first, second in ((hidden, read), (read, hidden)):
        gather = _GatherKey()
        one = gather.add_input(gather.create_accumulator(), first)
        other = gather.add_input(gather.create_accumulator(), second)
        assert gather.extract_output(gather.add_input(one, second)).entry == MatchedEntry(5)
        assert gather.extract_output(gather.merge_accumulators([other, gather.add_input(
            gather.create_accumulator(), first)])).entry == MatchedEntry(5)


def test_the_accumulator_that_crosses_the_shuffle_holds_only_plain_values():
    gather = _GatherKey()
    state = gather.add_input(gather.create_accumulator(), MatchedEntry(5))
    state = gather.add_input(state, Row((False, "/r.csv", 3), ImageRef("k", "/i/k.jpg")))
    pickled = pickle.dumps(state)
    assert b"transforms" not in pickled and b"core.records" not in pickled
    records = gather.extract_output(state)
    assert records.entry == MatchedEntry(5) and records.best.ref == ImageRef("k", "/i/k.jpg")
    assert records.rows == 1
