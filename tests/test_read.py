"""ReadInputs / ReadImages / ReadRows: formats by extension, rows to refs, bad rows to `read`
dead letters, every record counted once, keys unique."""
import base64
import csv
import json
import os
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.paths import quote_glob
from core.records import accounting, ImageRef, SkipReason
from tests.helpers import counters, LOCAL_RUNNER
from transforms.listing import escaped_key, glob_root, list_pattern
from transforms.read import (input_format, input_sources, pattern_for, ReadInputs, ref_rank,
                             skip_reason, split_sources)
from transforms.rows import (check_csv_header, parse_rows, resolve_uri, row_ref, RowError, RowSpec,
                             text_lines)
from transforms.select import SelectTodo


def lines_of(text: str):
    return text_lines(text.encode("utf-8").splitlines(keepends=True))


# -- formats and patterns ----------------------------------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ("rows.csv", "csv"), ("ROWS.CSV", "csv"), ("gs://b/x/rows.jsonl", "jsonl"),
    ("rows.ndjson", "jsonl"), ("rows.json", "jsonl"), ("rows.csv.gz", "csv"),
    ("list.txt", "filelist"), ("list.lst", "filelist"), ("photos/**/*.jpg", "images"),
    ("gs://bucket/prefix/**", "images"), ("rows/*.csv", "csv"),
])
def test_input_format_by_extension(given, expected):
    assert input_format(given) == expected


def test_input_format_folder_and_override(tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    assert input_format(str(folder)) == "images"  # a folder is images, whatever its name
    assert input_format("weird.name", "jsonl") == "jsonl"
    with pytest.raises(ValueError):
        input_format("x", "xml")


def test_split_sources(tmp_path):
    sources = input_sources([str(tmp_path), "a.csv", "gs://b/l.txt"])  # a.csv: no file
    images, rows = split_sources(sources)
    assert images == [os.path.join(str(tmp_path), "**")]
    assert rows == [(os.path.abspath("a.csv"), "csv"), ("gs://b/l.txt", "filelist")]


def test_pattern_for():
    assert pattern_for("gs://bucket") == "gs://bucket/**"
    assert pattern_for("gs://bucket/pre/") == "gs://bucket/pre/**"
    assert pattern_for("gs://bucket/pre") == "gs://bucket/pre/**"
    assert pattern_for("gs://bucket/pre/a.png") == "gs://bucket/pre/a.png"
    assert pattern_for("gs://bucket/a/*.jpg") == "gs://bucket/a/*.jpg"
    assert pattern_for("rel/*.png") == os.path.abspath("rel/*.png")


def test_existing_paths_are_taken_literally(tmp_path):
    folder = tmp_path / "set[1] a*b?"
    folder.mkdir()
    (folder / "x.csv").write_text("uri\n")
    quoted = quote_glob(str(folder))
    assert quoted == str(tmp_path) + "/set[[]1] a[*]b[?]"
    assert pattern_for(str(folder)) == quoted + "/**"
    assert pattern_for(str(folder / "x.csv")) == quoted + "/x.csv"
    assert glob_root(quoted + "/**") == str(folder)
    assert glob_root(quoted + "/*.jpg") == str(folder)
    assert glob_root("gs://b/set[12]/*.jpg") == "gs://b"


def test_escaped_key_only_changes_names_that_are_not_utf8():
    assert escaped_key("/d/été ñ.jpg") == "/d/été ñ.jpg"
    assert escaped_key(os.fsdecode(b"/d/caf\xe9.jpg")) == "/d/caf\\xe9.jpg"


def test_listing_never_follows_links_and_flags_non_regular_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.jpg").write_bytes(b"bb")
    os.symlink(tmp_path / "b.jpg", tmp_path / "c.jpg")
    os.symlink(tmp_path / "sub", tmp_path / "linked")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.mkfifo(tmp_path / "d.jpg")
    listed = {key: (entry.size, entry.reason)
              for key, entry in list_pattern(pattern_for(str(tmp_path)))}
    assert listed == {
        str(tmp_path / "b.jpg"): (2, None),
        str(tmp_path / "c.jpg"): (None, SkipReason.SYMLINK),
        str(tmp_path / "d.jpg"): (None, SkipReason.NOT_REGULAR_FILE),
        str(tmp_path / "linked"): (None, SkipReason.SYMLINK),
        str(tmp_path / "sub" / "a.jpg"): (1, None),
        str(tmp_path / "sub" / "loop"): (None, SkipReason.SYMLINK),
    }
    named = dict(list_pattern(pattern_for(str(tmp_path / "c.jpg"))))  # named: followed
    assert {k: v.reason for k, v in named.items()} == {str(tmp_path / "c.jpg"): None}
    globbed = dict(list_pattern(str(tmp_path / "*.jpg")))
    assert sorted(globbed) == [str(tmp_path / n) for n in ("b.jpg", "c.jpg", "d.jpg")]


def test_skip_reason_case_insensitive_hidden_and_not_images():
    assert skip_reason("/d/A.JPG", "/d") is None
    assert skip_reason("/d/b.TiFf", "/d") is None
    assert skip_reason("/d/.hidden.jpg", "/d") == SkipReason.HIDDEN
    assert skip_reason("/d/.git/x.png", "/d") == SkipReason.HIDDEN
    assert skip_reason("/d/notes.txt", "/d") == SkipReason.NOT_IMAGE


# -- rows --------------------------------------------------------------------------------------

def test_resolve_uri():
    assert resolve_uri("a/b.jpg", "/data/rows.csv") == "/data/a/b.jpg"
    assert resolve_uri("../b.jpg", "/data/sub/rows.csv") == "/data/b.jpg"
    assert resolve_uri("/abs/b.jpg", "/data/rows.csv") == "/abs/b.jpg"
    assert resolve_uri("file:///abs/b.jpg", "/data/rows.csv") == "/abs/b.jpg"
    assert resolve_uri("gs://x/y.jpg", "/data/rows.csv") == "gs://x/y.jpg"
    assert resolve_uri("img/y.jpg", "gs://bkt/in/rows.csv") == "gs://bkt/in/img/y.jpg"
    assert resolve_uri(" spaced name.jpg ", "/d/r.csv") == "/d/spaced name.jpg"


def test_row_ref_uri_key_and_fields():
    ref = row_ref({"uri": "a.jpg", "id": "7", "n": "x"}, RowSpec(key_field="id"), "/d/r.csv", 2)
    assert ref == ImageRef(key="7", uri="/d/a.jpg", fields={"uri": "a.jpg", "id": "7", "n": "x"},
                           origin="/d/r.csv:2")
    ref = row_ref({"uri": "a.jpg"}, RowSpec(), "/d/r.csv", 2)
    assert ref.key == "/d/a.jpg"


def test_row_ref_inline_b64_keys_by_file_and_line_and_drops_the_bytes_from_fields():
    ref = row_ref({"img": "AAAA", "label": 3}, RowSpec(b64_field="img"), "/d/r.jsonl", 9)
    assert (ref.key, ref.uri, ref.inline_b64) == ("/d/r.jsonl:9", None, "AAAA")
    assert ref.fields == {"label": "3"}


def test_row_ref_b64_falls_back_to_uri_for_mixed_inputs():
    ref = row_ref({"uri": "a.jpg"}, RowSpec(b64_field="img"), "/d/r.csv", 2)
    assert ref.uri == "/d/a.jpg"


@pytest.mark.parametrize("row,spec,message", [
    ({"other": "x"}, RowSpec(), "/d/r.csv line 4: no value in 'uri' (fields: other)"),
    ({"uri": "  "}, RowSpec(), "no value in 'uri'"),
    ({"uri": "a.jpg"}, RowSpec(key_field="id"), "/d/r.csv line 4: no value in key field 'id'"),
    ({"uri": ["a"]}, RowSpec(), "no value in 'uri'"),
])
def test_row_ref_errors_name_the_line(row, spec, message):
    with pytest.raises(RowError) as error:
        row_ref(row, spec, "/d/r.csv", 4)
    assert message in str(error.value)


def test_parse_csv_rows_line_numbers_and_errors():
    text = ('uri,id\n'
            'a.jpg,1\n'
            '\n'
            '"b, with comma.jpg",2\n'
            'c.jpg,3,extra\n'
            ',4\n')
    out = list(parse_rows("csv", lines_of(text), "/d/r.csv", RowSpec()))
    assert [n for n, _ in out] == [2, 4, 5, 6]
    assert out[0][1].uri == "/d/a.jpg" and out[0][1].fields == {"uri": "a.jpg", "id": "1"}
    assert out[1][1].uri == "/d/b, with comma.jpg"
    assert isinstance(out[2][1], RowError) and "3 fields but the header has 2" in str(out[2][1])
    assert isinstance(out[3][1], RowError) and "line 6" in str(out[3][1])


@pytest.fixture
def default_csv_field_limit():
    """The csv module's own limit during the test (another test may have raised it)."""
    before = csv.field_size_limit(128 * 1024)
    yield
    csv.field_size_limit(before)


def test_parse_csv_keeps_every_row_around_a_large_inline_image(default_csv_field_limit):
    big = base64.b64encode(os.urandom(400_000)).decode("ascii")  # over csv's default limit
    text = f"id,b64\n1,{big}\n2,{big[:8]}\n"
    out = list(parse_rows("csv", lines_of(text), "/d/r.csv", RowSpec(b64_field="b64",
                                                                       key_field="id")))
    assert [(n, r.key) for n, r in out] == [(2, "1"), (3, "2")]
    assert out[0][1].inline_b64 == big


def test_importing_the_pipeline_leaves_the_csv_field_limit_alone():
    code = ("import csv; before = csv.field_size_limit(); import pipeline.run; "
            "print(before == csv.field_size_limit())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.stdout.strip() == "True", result.stderr


def test_parse_jsonl_rows_and_errors():
    text = ('{"uri": "a.jpg", "meta": {"x": 1}}\n'
            'not json\n'
            '[1, 2]\n'
            '\n'
            '{"key": "k"}\n')
    out = list(parse_rows("jsonl", lines_of(text), "/d/r.jsonl", RowSpec()))
    assert [n for n, _ in out] == [1, 2, 3, 5]
    assert out[0][1].fields == {"uri": "a.jpg", "meta": '{"x":1}'}
    assert "line 2: not JSON" in str(out[1][1])
    assert "line 3: not a JSON object (list)" in str(out[2][1])
    assert "line 5: no value in 'uri'" in str(out[3][1])


def test_a_jsonl_row_with_an_escaped_lone_surrogate_is_a_row_error():
    """`\\ud800` is valid JSON but no character: no UTF-8 writer (Beam's coder first) takes
    the text it makes, so the row is refused as a raw non-UTF-8 row is."""
    text = ('{"uri": "a.jpg", "id": "\\ud800"}\n'
            '{"uri": "b.jpg", "note": "caf\\u00e9 \\ud83d\\ude00"}\n')
    (first, error), (_, ref) = parse_rows("jsonl", lines_of(text), "/d/r.jsonl", RowSpec())
    assert "line 1: not valid Unicode" in str(error)
    assert ref.fields["note"] == "café \U0001F600"  # an escaped pair is one character


def test_a_jsonl_row_nested_past_the_readers_recursion_is_a_row_error():
    text = '{"uri": "a.jpg", "x": ' + "[" * 5000 + "]" * 5000 + "}\n"
    ((_, error),) = parse_rows("jsonl", lines_of(text), "/d/r.jsonl", RowSpec())
    assert "line 1: JSON nested too deeply" in str(error)


def test_parse_filelist_skips_blanks_and_comments_and_ignores_row_fields():
    text = "# images\n\n/abs/a.jpg\n  rel/b.png  \n# end\n"
    spec = RowSpec(b64_field="img", key_field="id")
    out = list(parse_rows("filelist", lines_of(text), "/d/list.txt", spec))
    assert [(n, r.key, r.fields) for n, r in out] == [(3, "/abs/a.jpg", None),
                                                      (4, "/d/rel/b.png", None)]


def test_invalid_utf8_is_a_row_error_not_a_crash():
    raw = [b'uri\n', b'ok.jpg\n', b'bad\xff.jpg\n']
    out = list(parse_rows("csv", text_lines(raw), "/d/r.csv", RowSpec()))
    assert out[0][1].uri == "/d/ok.jpg"
    assert "line 3: not valid UTF-8" in str(out[1][1])


def test_bom_is_ignored():
    raw = ["\ufeffuri\n".encode("utf-8"), b"a.jpg\n"]
    [(_, ref)] = parse_rows("csv", text_lines(raw), "/d/r.csv", RowSpec())
    assert ref.uri == "/d/a.jpg"


def test_check_csv_header(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("path,id\nx.jpg,1\n")
    check_csv_header(str(path), RowSpec(uri_field="path", key_field="id"))
    with pytest.raises(ValueError, match="no 'uri' column"):
        check_csv_header(str(path), RowSpec())
    with pytest.raises(ValueError, match="no --key_field 'name'"):
        check_csv_header(str(path), RowSpec(uri_field="path", key_field="name"))


def test_ref_rank_prefers_rows_then_file_order():
    folder = ImageRef("/a.jpg", "/a.jpg")
    row2 = ImageRef("/a.jpg", "/a.jpg", fields={}, origin="/r.csv:2")
    row10 = ImageRef("/a.jpg", "/a.jpg", fields={}, origin="/r.csv:10")
    assert sorted([folder, row10, row2], key=ref_rank) == [row2, row10, folder]


# -- the composite -----------------------------------------------------------------------------

def test_read_inputs_mixed_kinds_counts_every_record_once(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub dir").mkdir(parents=True)
    for name in ("a.jpg", "B.PNG", "sub dir/ç ü.webp", ".hidden.jpg", "notes.txt"):
        (photos / name).write_bytes(b"x")
    rows = tmp_path / "rows.csv"
    rows.write_text("uri,id\nphotos/a.jpg,1\nphotos/missing.jpg,2\n,3\n")
    inline = tmp_path / "inline.jsonl"
    inline.write_text(json.dumps({"b64": base64.b64encode(b"img").decode()}) + "\nnope\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# all\n{photos / 'B.PNG'}\n")
    p = TestPipeline(runner=LOCAL_RUNNER)
    read = p | ReadInputs(input_sources([str(photos), str(rows), str(inline), str(listing)]),
                          RowSpec(b64_field="b64"))
    out = read | SelectTodo(passthrough=("id",))
    expected_keys = [str(photos / "a.jpg"), str(photos / "B.PNG"),
                     str(photos / "sub dir/ç ü.webp"), str(photos / "missing.jpg"),
                     f"{inline}:1"]
    assert_that(out.refs | beam.Map(lambda r: r.key), equal_to(expected_keys), label="keys")
    assert_that(out.refs | beam.Filter(lambda r: r.key == str(photos / "a.jpg"))
                | beam.Map(lambda r: r.fields),
                equal_to([{"id": "1"}]), label="row wins over folder")
    assert_that(out.failed, equal_to([]), label="no folder failed")
    assert_that(read.failed | beam.Map(lambda r: (r["key"], r["stage"])),
                equal_to([(f"{rows}:4", "read"), (f"{inline}:2", "read")]), label="failed")
    result = p.run()
    result.wait_until_finish()
    counts = counters(result)
    # 5 files + 3 csv rows + 2 jsonl lines + 1 list line
    assert counts["inputs"] == 11
    assert counts["skipped_hidden"] == 1 and counts["skipped_not_image"] == 1
    assert counts["skipped_duplicate_key"] == 2  # a.jpg (csv + folder), B.PNG (list + folder)
    assert counts["failed_read"] == 2
    assert counts["inputs"] == len(expected_keys) + counts["failed_read"] + accounting(counts)["skipped"]


def test_read_inputs_images_only_has_no_row_steps(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    p = TestPipeline(runner=LOCAL_RUNNER)
    out = p | ReadInputs(input_sources([str(tmp_path), str(tmp_path / "*.jpg")])) | SelectTodo()
    assert_that(out.refs | beam.Map(lambda r: (r.key, r.size)),
                equal_to([(str(tmp_path / "a.jpg"), 1)]))
    assert_that(out.failed, equal_to([]), label="no failures")
    result = p.run()
    result.wait_until_finish()
    assert counters(result)["inputs"] == 1  # matched by both patterns: one record
    assert "skipped" not in counters(result)
