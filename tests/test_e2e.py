"""End to end on DirectRunner against the project's own server over loopback."""
import datetime
import os

from localserver.demo import LABEL_COLOURS, write_image
from pipeline.run import run
from tests.helpers import assert_accounted, labelled_images, read_dead_letters, read_predictions

LABELS = list(LABEL_COLOURS) * 3  # 24 images, every label three times


def job(tmp_path, server, *extra, protocol="mlengine"):
    return run(["--input", str(tmp_path / "images"),
                "--endpoint", server.endpoint(protocol),
                "--protocol", protocol,
                "--output", str(tmp_path / "out" / "pred"),
                *extra])


def test_every_image_gets_a_row_with_its_true_label(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS)
    summary = job(tmp_path, server, "--output_format", "both",
                  "--max_instances_per_request", "5")
    for fmt in ("parquet", "jsonl"):
        rows = read_predictions(str(tmp_path / "out" / "pred"), fmt)
        assert sorted(r["key"] for r in rows) == sorted(truth), fmt
        assert {r["key"]: r["top_label"] for r in rows} == truth, fmt
        for row in rows:
            scores = [l["score"] for l in row["labels"]]
            assert scores == sorted(scores, reverse=True)
            assert len(row["labels"]) == len(LABEL_COLOURS)
            assert row["top_score"] == scores[0]
            assert row["model"] == "projects/local-project/models/local-color-classifier"
    assert summary["predicted"] == len(truth) and summary["failed"] == 0
    assert_accounted(summary)


def test_requests_respect_both_caps(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS, size=(64, 64))
    cap_bytes = 6000  # a few small images per request
    summary = job(tmp_path, server, "--max_instances_per_request", "4",
                  "--max_request_bytes", str(cap_bytes))
    stats = server.stats()
    assert stats["max_request_instances"] <= 4
    assert 0 < stats["max_request_bytes"] <= cap_bytes
    assert stats["instances"] == len(truth) == summary["predicted"]
    assert summary["requests"] == stats["requests"] > len(truth) / 4
    assert_accounted(summary)


def test_corrupt_file_is_a_decode_dead_letter_and_the_rest_succeed(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    corrupt = tmp_path / "images" / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    started = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    summary = job(tmp_path, server)
    ended = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    assert [(d["key"], d["stage"]) for d in letters] == [(str(corrupt), "decode")]
    assert "not a recognised image format" in letters[0]["error"]
    assert set(letters[0]) == {"key", "stage", "error", "http_status", "attempts", "failed_at"}
    failed_at = datetime.datetime.strptime(letters[0]["failed_at"], "%Y-%m-%d %H:%M:%S.%f")
    assert started <= failed_at <= ended
    assert summary["failed"] == 1 and summary["failed_by_stage"] == {"decode": 1}
    assert_accounted(summary)


def test_image_the_server_rejects_is_isolated_from_its_neighbours(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:12], fmt_cycle=("jpg",))
    poison = tmp_path / "images" / "poison.jpg"
    write_image(str(poison), "red", size=(256, 256), quality=95)
    whole = poison.read_bytes()
    poison.write_bytes(whole[:len(whole) // 2])  # the header parses, the pixels do not
    summary = job(tmp_path, server, "--max_instances_per_request", "16")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    assert [(d["key"], d["stage"], d["http_status"]) for d in letters] == \
        [(str(poison), "predict", 400)]
    assert summary["splits"] >= 1
    assert_accounted(summary)


def test_requests_run_concurrently_up_to_the_cap(tmp_path, make_server):
    slow = make_server(latency_ms=200)
    labelled_images(tmp_path / "images", LABELS)
    summary = job(tmp_path, slow, "--max_instances_per_request", "1",
                  "--max_concurrent_requests", "6")
    stats = slow.stats()
    assert stats["requests"] == len(LABELS)
    assert 1 < stats["max_in_flight"] <= 6
    assert_accounted(summary)


def test_each_protocol_round_trips(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    for protocol in ("automl", "vertex"):
        out = tmp_path / protocol
        summary = run(["--input", str(tmp_path / "images"), "--protocol", protocol,
                       "--endpoint", server.endpoint(protocol), "--output", str(out / "p")])
        rows = read_predictions(str(out / "p"))
        assert {r["key"]: r["top_label"] for r in rows} == truth, protocol
        assert_accounted(summary)


def test_outputs_of_a_second_run_do_not_replace_the_first(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:4])
    first = job(tmp_path, server)
    second = job(tmp_path, server)
    assert first["run_id"] != second["run_id"]
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert sorted(r["key"] for r in rows) == sorted(list(truth) * 2)
    assert os.path.exists(str(tmp_path / "out" / "pred.schema.json"))
