"""The sinks: Parquet with the declared Arrow schema, BigQuery-loadable JSONL checked against
the written schema file, WriteToBigQuery built offline, output path templates, passthrough."""
import datetime
import glob
import json
import re
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.testing.test_pipeline import TestPipeline

from core.paths import render_path, shard_glob, shard_regex, template_glob
from core.records import (bigquery_field, bigquery_schema, prediction_record, PREDICTION_SCHEMA,
                          prediction_schema, to_json_row)
from pipeline.config import new_run_id
from pipeline.graph import build_pipeline
from pipeline.options import ConfigError
from pipeline.outputs import bq_load_command, write_bigquery_schema
from pipeline.run import parse
from tests.helpers import (assert_accounted, check_jsonl_against_schema_file, check_row,
                           labelled_images, LOCAL_RUNNER)
from transforms.passthrough import kept_fields, with_values
from transforms.rows import as_text
from transforms.write import parse_bigquery_table, parse_passthrough_fields, WriteResults

AT = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
RUN = "20240506T070809Z-a1b2c3"


def records(n=5, extra=None):
    out = []
    for i in range(n):
        record = prediction_record(f"/data/img_{i}.jpg", [("red", 0.1 * i), ("blue", 0.5)],
                                   "projects/p/models/m", AT)
        out.append(record)
    out.append(prediction_record("/data/empty.jpg", [], "projects/p/models/m", AT))
    return [{**record, **(extra or {})} for record in out]


def write(tmp_path, rows, fmt, extra_fields=()):
    prefix = str(tmp_path / f"pred-{RUN}")
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        p | beam.Create(rows) | WriteResults(prefix, fmt, extra_fields)
    return prefix


# -- Parquet -------------------------------------------------------------------------------

def test_parquet_has_the_declared_arrow_schema_snappy_and_standard_lists(tmp_path):
    rows = records()
    prefix = write(tmp_path, rows, "parquet")
    paths = glob.glob(f"{prefix}-*-of-*.parquet")
    assert paths
    for path in paths:
        assert pq.read_schema(path) == PREDICTION_SCHEMA == prediction_schema()
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        assert meta.num_row_groups >= 1
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(g).column(c).compression == "SNAPPY"
        # the 3-level LIST form (list.element) BigQuery's list inference reads
        paths_in_file = {parquet.schema.column(i).path for i in range(meta.num_columns)}
        assert "labels.list.element.label" in paths_in_file
        assert parquet.schema.column(0).max_definition_level == 0  # key is REQUIRED
    back = [r for path in paths for r in pq.read_table(path).to_pylist()]
    assert sorted(back, key=lambda r: r["key"]) == sorted(rows, key=lambda r: r["key"])


def test_parquet_row_groups_and_rows_are_those_of_beams_writer(tmp_path):
    """WriteParquet converts whole batches with Arrow; the files hold what Beam's own
    WriteToParquet writes: the same rows in the same row groups."""
    from apache_beam.io.parquetio import WriteToParquet
    from transforms.write import PARQUET_RECORD_BATCH_SIZE, WriteParquet
    rows = records(2500) + [{**records(1)[0], "key": "/data/no_boxes.jpg", "boxes": None}]
    schema, group_bytes = prediction_schema(), 60_000
    ours, beams = str(tmp_path / "ours"), str(tmp_path / "beams")
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        created = p | beam.Create(rows, reshuffle=False)
        created | WriteParquet(ours, schema, row_group_bytes=group_bytes)
        created | WriteToParquet(beams, schema=schema, row_group_buffer_size=group_bytes,
                                 record_batch_size=PARQUET_RECORD_BATCH_SIZE,
                                 use_compliant_nested_type=True, codec="snappy",
                                 file_name_suffix=".parquet")
    layouts = []
    for prefix in (ours, beams):
        files = [pq.ParquetFile(path) for path in sorted(glob.glob(f"{prefix}-*.parquet"))]
        groups = sorted(f.metadata.row_group(g).num_rows
                        for f in files for g in range(f.metadata.num_row_groups))
        table = [r for f in files for r in f.read().to_pylist()]
        layouts.append((groups, sorted(table, key=lambda r: r["key"])))
    assert layouts[0] == layouts[1]
    assert len(layouts[0][0]) > 1  # several row groups were compared


def test_parquet_with_passthrough_columns(tmp_path):
    rows = records(3, extra={"customer": "acme", "note": None})
    prefix = write(tmp_path, rows, "parquet", ("customer", "note"))
    [path] = glob.glob(f"{prefix}-*.parquet")
    schema = pq.read_schema(path)
    assert schema == prediction_schema(("customer", "note"))
    assert schema.names[-2:] == ["customer", "note"]
    assert {r["customer"] for r in pq.read_table(path).to_pylist()} == {"acme"}


# -- JSONL against the written schema file -------------------------------------------------

def test_jsonl_lines_match_the_schema_file(tmp_path):
    rows = records(4, extra={"customer": "acme"})
    prefix = write(tmp_path, rows, "jsonl", ("customer",))
    write_bigquery_schema(str(tmp_path / "pred.schema.json"), ("customer",))
    paths = glob.glob(f"{prefix}-*.jsonl")
    back = check_jsonl_against_schema_file(paths, str(tmp_path / "pred.schema.json"))
    assert sorted(r["key"] for r in back) == sorted(r["key"] for r in rows)
    assert {r["predicted_at"] for r in back} == {"2024-05-06 07:08:09.123456"}
    empty = next(r for r in back if r["key"] == "/data/empty.jpg")
    assert empty["labels"] == [] and empty["top_label"] is None


def test_schema_check_rejects_what_bq_load_rejects():
    fields = bigquery_schema()
    good = json.loads(json.dumps(to_json_row(records(1)[0])))
    check_row(good, fields)
    bad_rows = [
        {**good, "predicted_at": "2024-05-06T07:08:09+00:00Z"},
        {**good, "labels": {"red": 0.5}},  # a map, not REPEATED RECORD
        {**good, "key": None},
        {**good, "top_score": "0.5"},
        {**good, "surprise": 1},
        {**good, "labels": None},  # null, not absent, in a REPEATED field
        {k: v for k, v in good.items() if k != "key"},
    ]
    for row in bad_rows:
        with pytest.raises(AssertionError):
            check_row(row, fields)


def test_bigquery_schema_of_the_prediction_rows():
    nullable = lambda name, kind: {"name": name, "type": kind, "mode": "NULLABLE"}
    assert bigquery_schema(("customer",)) == [
        {"name": "key", "type": "STRING", "mode": "REQUIRED"},
        {"name": "labels", "type": "RECORD", "mode": "REPEATED",
         "fields": [nullable("label", "STRING"), nullable("score", "FLOAT")]},
        nullable("top_label", "STRING"),
        nullable("top_score", "FLOAT"),
        nullable("model", "STRING"),
        nullable("predicted_at", "TIMESTAMP"),
        {"name": "boxes", "type": "RECORD", "mode": "REPEATED",
         "fields": [nullable("label", "STRING")] + [nullable(n, "FLOAT") for n in (
             "score", "x_min", "x_max", "y_min", "y_max")]},
        nullable("prediction", "STRING"),
        {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"},
        nullable("customer", "STRING"),
    ]


def test_bigquery_fields_follow_the_arrow_types():
    inner = pa.struct([("n", pa.int64()), ("ok", pa.bool_())])
    assert bigquery_field(pa.field("f", inner, nullable=False)) == {
        "name": "f", "type": "RECORD", "mode": "REQUIRED",
        "fields": [{"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
                   {"name": "ok", "type": "BOOLEAN", "mode": "NULLABLE"}]}
    assert bigquery_field(pa.field("t", pa.list_(pa.timestamp("us", tz="UTC")))) == {
        "name": "t", "type": "TIMESTAMP", "mode": "REPEATED"}


def test_bq_load_command():
    schema = "/out/pred.schema.json"
    one = bq_load_command("/out/pred-R", schema, "p:d.t", ["/out/pred-R-00000-of-00001.jsonl"])
    assert one == ("bq load --source_format=NEWLINE_DELIMITED_JSON p:d.t "
                   "/out/pred-R-00000-of-00001.jsonl /out/pred.schema.json")
    many = bq_load_command("/out/pred-R", schema, None, ["a", "b"])
    assert many.startswith("for f in /out/pred-R-*.jsonl; do bq load "
                           "--source_format=NEWLINE_DELIMITED_JSON DATASET.TABLE \"$f\" ")
    gcs = bq_load_command("gs://b/pred-R", "gs://b/pred.schema.json", "d.t")
    assert gcs == ("gcloud storage cp gs://b/pred.schema.json ./pred.schema.json && "
                   "bq load --source_format=NEWLINE_DELIMITED_JSON d.t 'gs://b/pred-R-*.jsonl' "
                   "./pred.schema.json")


# -- BigQuery, built offline ---------------------------------------------------------------

def bigquery_transforms(pipeline):
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, WriteToBigQuery):
                found.append(node.transform)

    pipeline.visit(Visitor())
    return found


BASE = ["--input", "/nowhere/images", "--endpoint", "http://127.0.0.1:9/v1/m:predict"]


def test_bigquery_sink_is_built_with_the_same_schema_and_file_loads(tmp_path):
    options, config = parse(BASE + [
        "--output", str(tmp_path / "p"), "--output_format", "bigquery",
        "--bigquery_table", "my-project:my_dataset.predictions",
        "--bigquery_temp_location", "gs://bucket/tmp", "--passthrough_fields", "customer"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, config)  # built, never run: there is no BigQuery here
    [sink] = bigquery_transforms(p)
    assert sink.schema == {"fields": bigquery_schema(("customer",))}
    assert sink.method == WriteToBigQuery.Method.FILE_LOADS
    assert sink.create_disposition == BigQueryDisposition.CREATE_IF_NEEDED
    assert sink.write_disposition == BigQueryDisposition.WRITE_APPEND
    assert sink.custom_gcs_temp_location == "gs://bucket/tmp"
    ref = sink.table_reference
    assert (ref.projectId, ref.datasetId, ref.tableId) == \
        ("my-project", "my_dataset", "predictions")


def test_bigquery_falls_back_to_temp_location(tmp_path):
    _, config = parse(BASE + ["--output", str(tmp_path / "p"), "--output_format", "bigquery",
                              "--bigquery_table", "ds.t", "--temp_location", "gs://b/t"])
    assert config.bigquery.temp_location == "gs://b/t" and config.bigquery.table == "ds.t"


@pytest.mark.parametrize("flags, message", [
    (["--bigquery_table", "ds.t"], "gs://"),
    (["--bigquery_table", "ds.t", "--temp_location", "/tmp/x"], "gs://"),
    (["--bigquery_table", "no_dataset", "--bigquery_temp_location", "gs://b/t"],
     "project:dataset.table"),
    (["--bigquery_table", "ds.t", "--bigquery_temp_location", "gs://b/t", "--skip_existing"],
     "--skip_existing"),
])
def test_bigquery_flags_are_checked(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(BASE + ["--output", str(tmp_path / "p"), "--output_format", "bigquery", *flags])


def test_parse_bigquery_table():
    assert parse_bigquery_table("proj-1:ds_2.table_3") == "proj-1:ds_2.table_3"
    for bad in (None, "", "a.b.c", "proj:ds", "proj:ds.t:x"):
        with pytest.raises(ValueError):
            parse_bigquery_table(bad)


# -- templated paths and which files are shards --------------------------------------------

def test_render_path_and_unknown_placeholder():
    assert render_path("gs://b/{date}/p-{run_id}", "2024-05-06", RUN) == \
        f"gs://b/2024-05-06/p-{RUN}"
    assert render_path("/plain/p", "2024-05-06", RUN) == "/plain/p"
    with pytest.raises(ValueError, match="unknown placeholder"):
        render_path("/o/{day}/p", "2024-05-06", RUN)
    assert template_glob("/o/{date}/p-{run_id}") == "/o/*/p-*"


def test_templated_output_and_errors_in_config(tmp_path):
    _, config = parse(BASE + ["--output", str(tmp_path / "{date}" / "pred"),
                              "--errors", str(tmp_path / "dl" / "{run_id}" / "e")])
    date = datetime.datetime.strptime(config.run_id[:8], "%Y%m%d").strftime("%Y-%m-%d")
    assert config.output == str(tmp_path / date / "pred")
    assert config.errors == str(tmp_path / "dl" / config.run_id / "e")
    assert config.output_template == str(tmp_path / "{date}" / "pred")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        parse(BASE + ["--output", str(tmp_path / "{when}" / "pred")])


def test_shard_regex_trusts_only_complete_prediction_shards():
    template = "/o/{date}/pred"
    run = new_run_id()
    regex = shard_regex(template, "parquet")
    assert shard_glob(template, "parquet") == "/o/*/pred-*-of-*.parquet"
    trusted = [f"/o/2024-05-06/pred-{run}-00000-of-00001.parquet",
               f"/o/2024-05-06/pred-{run}-00012-of-00100.parquet"]
    not_trusted = [
        f"/o/2024-05-06/pred-errors-{run}-00000-of-00001.parquet",  # dead letters
        f"/o/2024-05-06/pred-{run}-summary.json",
        f"/o/2024-05-06/beam-temp-pred-{run}-0a1b/7e3f.pred-{run}.parquet",  # a temp file
        f"/o/2024-05-06/pred-{run}-00000-of-00001.jsonl",
        f"/o/2024-05-06/pred-old-{run}-00000-of-00001.parquet",  # another prefix
        f"/o/not-a-date/pred-{run}-00000-of-00001.parquet",
        f"/o/2024-05-06/x/pred-{run}-00000-of-00001.parquet",
    ]
    assert [p for p in trusted if re.match(regex, p)] == trusted
    assert [p for p in not_trusted if re.match(regex, p)] == []


# -- passthrough ---------------------------------------------------------------------------

def test_parse_passthrough_fields():
    assert parse_passthrough_fields(" a, b_2 ,") == ("a", "b_2")
    assert parse_passthrough_fields(None) == ()
    for bad in ("key", "a,a", "2a", "a-b"):
        with pytest.raises(ValueError):
            parse_passthrough_fields(bad)


def test_passthrough_values_as_text():
    assert [as_text(v) for v in (None, "x", 3, 2.5, True, [1, "a"], {"k": 1})] == \
        [None, "x", "3", "2.5", "true", '[1,"a"]', '{"k":1}']


def test_passthrough_values_of_a_row_and_of_an_image_join_the_record():
    record = prediction_record("a", [("red", 0.9)], "m", AT)
    row = kept_fields({"customer": "acme", "n": 1, "other": "z"}, ("customer", "n"))
    assert row == {"customer": "acme", "n": "1"}
    assert kept_fields(None, ("customer", "n")) == {"customer": None, "n": None}  # an image input
    assert kept_fields({"customer": "acme"}, ()) is None
    assert with_values(record, row) == {**record, "customer": "acme", "n": "1"}
    assert with_values(record, None) == record


def test_the_run_prints_the_bq_load_command_after_the_summary(tmp_path, server):
    labelled_images(tmp_path / "images", ["red", "blue"])
    out = str(tmp_path / "out" / "pred")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "images"),
         "--endpoint", server.endpoint("mlengine"), "--output", out, "--output_format", "jsonl",
         "--bigquery_table", "proj:ds.preds"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert_accounted(summary)
    [shard] = glob.glob(f"{summary['output']}-*.jsonl")
    command = ("bq load --source_format=NEWLINE_DELIMITED_JSON proj:ds.preds "
               f"{shard} {out}.schema.json")
    assert f"load the JSONL into BigQuery: {command}" in result.stderr.splitlines()
    assert summary["bq_load"] == command
    check_jsonl_against_schema_file([shard], f"{out}.schema.json")


# -- the prediction column -----------------------------------------------------------------

def test_prediction_column_in_parquet_jsonl_and_the_schema_file(tmp_path):
    said = '{"labels":["red","blue"],"scores":[0.2,0.8],"note":"ünï"}'
    rows = [prediction_record("/d/a.jpg", [("red", 0.2), ("blue", 0.8)], "m", AT,
                              prediction=said),
            prediction_record("/d/b.jpg", [("red", 0.9)], "m", AT)]  # left out: None
    prefix = write(tmp_path, rows, "both")
    [parquet] = glob.glob(f"{prefix}-*.parquet")
    assert pq.read_schema(parquet).field("prediction").type == pa.string()
    assert {r["key"]: r["prediction"] for r in pq.read_table(parquet).to_pylist()} == \
        {"/d/a.jpg": said, "/d/b.jpg": None}
    write_bigquery_schema(str(tmp_path / "pred.schema.json"))
    back = check_jsonl_against_schema_file(glob.glob(f"{prefix}-*.jsonl"),
                                           str(tmp_path / "pred.schema.json"))
    by_key = {r["key"]: r for r in back}
    assert by_key["/d/a.jpg"]["prediction"] == said and "prediction" not in by_key["/d/b.jpg"]
    assert {"name": "prediction", "type": "STRING", "mode": "NULLABLE"} in bigquery_schema()
