"""EncodeInstances: original bytes on the hot path, normalisation only when needed, stepped
re-encoding for oversize images, and every protocol's encoding accepted by the local server."""
import base64
import functools
import io
import json
import os
import random
import struct
import urllib.request
import zlib

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from core.records import ImageRef, Stage
from imaging import decode
from imaging.decode import ImageError, open_image, parse_size, prepare
from imaging.tensor import tensor_spec
from localserver.demo import color_image
from protocols import make_protocol
from tests.helpers import counters, LOCAL_RUNNER
from transforms import encode
from transforms.encode import encode_instance, EncodeInstances, read_bytes

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def image_bytes(label="red", fmt="JPEG", size=(40, 30), mode="RGB", **save_args) -> bytes:
    img = color_image(label, size, seed=1)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def noisy_jpeg(size=(600, 600)) -> bytes:
    """A JPEG that compresses badly (random pixels), for the size-budget tests."""
    img = Image.frombytes("RGB", size, random.Random(7).randbytes(3 * size[0] * size[1]))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=100)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# -- the hot path ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                      ("WEBP", "image/webp"), ("BMP", "image/bmp")])
def test_acceptable_image_is_sent_as_its_original_bytes(fmt, mime):
    data = image_bytes(fmt=fmt)
    prepared = prepare(data)
    assert prepared.data is data  # the very same object: no decode, no re-encode
    assert prepared.mime_type == mime


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_header_inspection_decodes_no_pixels(fmt):
    img = open_image(image_bytes(fmt=fmt))
    assert not decode.needs_normalising(img, None)
    assert img._im is None, "the pixels were decoded (Pillow fills ._im on load())"


def test_grayscale_jpeg_is_sent_as_is():
    data = image_bytes(mode="L")
    assert prepare(data).data is data


# -- normalisation -----------------------------------------------------------------------------

def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = 6  # rotate 90 degrees clockwise to display
    data = image_bytes(size=(40, 20), exif=exif.tobytes())
    prepared = prepare(data)
    assert prepared.data != data
    assert prepared.mime_type == "image/jpeg"
    assert decoded(prepared.data).size == (20, 40)


@pytest.mark.parametrize("fmt,mode,out_mime", [
    ("JPEG", "CMYK", "image/jpeg"),
    ("PNG", "P", "image/png"),
    ("PNG", "LA", "image/png"),
    ("PNG", "RGBA", "image/png"),
    ("TIFF", "RGB", "image/png"),
    ("GIF", "P", "image/png"),
])
def test_other_modes_become_rgb(fmt, mode, out_mime):
    prepared = prepare(image_bytes(fmt=fmt, mode=mode))
    assert prepared.mime_type == out_mime
    img = decoded(prepared.data)
    assert img.mode == "RGB"
    r, g, b = img.resize((1, 1)).getpixel((0, 0))
    if mode == "LA":
        assert abs(r - g) < 8 and abs(g - b) < 8  # grey stays grey
    else:
        assert r > 150 and g < 90 and b < 90  # still red


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = decoded(prepare(buf.getvalue()).data)
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_grayscale_becomes_rgb():
    img = Image.new("I;16", (8, 8), 40000)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert open_image(buf.getvalue()).mode.startswith("I")
    out = decoded(prepare(buf.getvalue()).data)
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (156, 156, 156)  # 40000 / 256


def test_image_size_fits_inside_the_box():
    prepared = prepare(image_bytes(size=(200, 100)), image_size=(50, 50))
    assert decoded(prepared.data).size == (50, 25)


def test_tensor_instances_are_nested_lists_at_the_exact_size():
    spec = tensor_spec((4, 3), "unit", dtype="FP32")
    for name in ("", "input_1"):
        protocol = make_protocol("mlengine", "tensor", tensor=spec, tensor_input_name=name)
        instance = encode_instance("k", image_bytes(size=(30, 20)), protocol, 1_500_000)
        value = json.loads(instance.body)
        rows = value[name] if name else value
        assert len(rows) == 3 and all(len(row) == 4 for row in rows)
        assert all(len(p) == 3 and all(0 <= v <= 1 for v in p) for row in rows for p in row)


def test_a_tensor_over_the_byte_cap_is_an_encode_failure_naming_binary_data():
    protocol = make_protocol("mlengine", "tensor", tensor=tensor_spec((224, 224), "imagenet",
                                                                        dtype="FP32"))
    with pytest.raises(ImageError) as error:
        encode_instance("k", image_bytes(size=(300, 300)), protocol, 1_500_000)
    assert error.value.stage == Stage.ENCODE and "--binary_data" in str(error.value)


def test_parse_size():
    assert parse_size("224x160") == (224, 160)
    assert parse_size(None) is None
    for bad in ("224", "0x10", "axb", "99999x99999"):  # the last: ~40 GB of pixels
        with pytest.raises(ValueError):
            parse_size(bad)


# -- bad images --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("data,message", [
    (b"", "empty file"),
    (b"this is not an image at all", "not a recognised image format"),
    (png_header_only(20000, 20000), "decompression bomb"),  # Pillow refuses it itself
    (png_header_only(10000, 10000), "decompression bomb"),  # Pillow only warns: we refuse
])
def test_bad_images_fail_at_decode(data, message):
    with pytest.raises(ImageError) as error:
        encode_instance("k", data, make_protocol("mlengine"), 1_500_000)
    assert error.value.stage == "decode"
    assert message in str(error.value)


def layered_jpeg(side: int, scans: int) -> bytes:
    """A grey progressive JPEG of `side` x `side` pixels (a multiple of 8), all blocks flat:
    one DC scan, then `scans - 1` AC scans that each skip every block with one EOB run."""
    def segment(marker, payload):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    def packed(bits):  # Huffman bits to bytes, padded with 1s, 0xFF stuffed
        bits += "1" * (-len(bits) % 8)
        raw = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
        return raw.replace(b"\xff", b"\xff\x00")

    blocks = (side // 8) ** 2
    ac_scan = segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + packed("0" + "1" * 14)
    return b"".join([
        b"\xff\xd8", segment(0xDB, b"\x00" + bytes([1] * 64)),
        segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00"),
        segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00"),  # DC: code 0 = no change
        segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\xe0"),  # AC: code 0 = EOB run
        segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + packed("0" * blocks),
        ac_scan * (scans - 1), b"\xff\xd9"])


def test_a_jpeg_of_too_many_scans_is_refused_before_it_is_decoded():
    """Each scan of a progressive JPEG can cost a pass over the pixels: 100,000 scans in a
    3 MB file held a job for minutes. Past MAX_JPEG_SCANS it is a decompression bomb;
    an ordinary layering (Pillow's progressive JPEG, or this one at 20 scans) is decoded."""
    protocol = make_protocol("mlengine")
    with pytest.raises(ImageError) as error:
        encode_instance("k", layered_jpeg(64, decode.MAX_JPEG_SCANS + 1), protocol,
                        1_500_000, image_size=(32, 32))
    assert error.value.stage == "decode" and "scans" in str(error.value)
    assert decoded(layered_jpeg(64, 20)).size == (64, 64)
    for data in (layered_jpeg(64, 20), jpeg_bytes_progressive()):
        instance = encode_instance("k", data, protocol, 1_500_000, image_size=(32, 32))
        assert decoded(base64.b64decode(json.loads(instance.body)["b64"])).size == (32, 32)


def jpeg_bytes_progressive() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG", progressive=True)
    return buf.getvalue()


def test_truncated_jpeg_passes_the_header_check():
    """Its header parses, so it is sent as it is; the server rejects it (stage predict)."""
    data = noisy_jpeg((100, 100))
    truncated = data[:len(data) * 2 // 3]
    assert prepare(truncated).data is truncated


def test_oversize_image_is_reencoded_until_it_fits():
    data = noisy_jpeg()
    protocol = make_protocol("mlengine")
    budget = len(data) // 3
    instance = encode_instance("k", data, protocol, budget)
    assert protocol.body_size([len(instance.body)]) <= budget
    sent = base64.b64decode(json.loads(instance.body)["b64"])
    assert decoded(sent).format == "JPEG"


def test_downscaling_stops_at_the_minimum_side():
    data = noisy_jpeg((900, 600))
    versions = [decoded(v) for v, _ in decode.smaller_versions(data)]
    assert versions[-1].size[1] >= decode.MIN_SIDE
    assert versions[-1].size[1] < decode.MIN_SIDE / decode.DOWNSCALE_FACTOR
    assert [v.size for v in versions[:len(decode.JPEG_QUALITIES)]] == [(900, 600)] * 4
    small = [decoded(v).size for v, _ in decode.smaller_versions(noisy_jpeg((100, 80)))]
    assert small == [(100, 80)] * len(decode.JPEG_QUALITIES)  # small: quality steps only


def test_image_too_large_even_after_reencoding_fails_at_encode_with_its_size():
    data = noisy_jpeg((200, 200))
    with pytest.raises(ImageError) as error:
        encode_instance("k", data, make_protocol("mlengine"), 120)
    assert error.value.stage == Stage.ENCODE
    assert f"image of {len(data)} bytes" in str(error.value)
    assert "--max_request_bytes=120" in str(error.value)


# -- reading -----------------------------------------------------------------------------------

def test_read_bytes_inline_and_from_a_file(tmp_path):
    data = image_bytes()
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert read_bytes(ImageRef("k", str(path))) == data
    assert read_bytes(ImageRef("k", None, base64.b64encode(data).decode())) == data


def test_read_bytes_errors_name_the_row(tmp_path):
    with pytest.raises(ImageError) as error:
        read_bytes(ImageRef("k", None, "not base64!", origin="rows.jsonl:7"))
    assert error.value.stage == "read" and "rows.jsonl:7" in str(error.value)
    missing = str(tmp_path / "gone.jpg")
    with pytest.raises(ImageError) as error:
        read_bytes(ImageRef(missing, missing, origin="rows.csv:3"))
    assert str(error.value) == f"file not found: {missing} (row rows.csv:3)"


def test_read_bytes_refuses_a_file_too_large_to_be_an_image(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: no disk or memory spent on the test's side
        f.truncate(encode.MAX_FILE_BYTES + 1)
    for size in (encode.MAX_FILE_BYTES + 1, None):  # listed size known, or not
        with pytest.raises(ImageError) as error:
            read_bytes(ImageRef(str(huge), str(huge), size=size))
        assert error.value.stage == "read"
        assert f"file of {encode.MAX_FILE_BYTES + 1} bytes is over" in str(error.value)


def test_read_capped_reads_what_fstat_said_or_what_the_file_has_now(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert encode.read_capped(functools.partial(os.read, fd), 100) == b"x" * 100
        os.lseek(fd, 0, os.SEEK_SET)
        assert encode.read_capped(functools.partial(os.read, fd), 10, chunk_bytes=4) == b"x" * 100  # it grew after fstat
        os.lseek(fd, 0, os.SEEK_SET)
        assert encode.read_capped(functools.partial(os.read, fd), 200) == b"x" * 100  # it shrank
    finally:
        os.close(fd)


def counted_reads(monkeypatch, at_most=None):
    """os.read as encode calls it, counted; returning at most `at_most` bytes a call."""
    calls = []
    real = os.read

    def read(fd, n):
        calls.append(n)
        return real(fd, n if at_most is None else min(n, at_most))

    monkeypatch.setattr(encode.os, "read", read)
    return calls


def test_read_capped_reads_a_file_of_the_size_fstat_said_in_one_read(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    calls = counted_reads(monkeypatch)
    assert encode.read_local(str(path)) == b"x" * 100
    assert calls == [101]


def test_read_capped_goes_on_after_short_reads(tmp_path, monkeypatch):
    data = bytes(range(256)) * 4
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    calls = counted_reads(monkeypatch, at_most=3)  # as a FUSE mount or a signal may
    assert encode.read_local(str(path)) == data
    assert len(calls) > len(data) // 3


def test_read_capped_reads_on_when_fstat_said_less(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        calls = counted_reads(monkeypatch, at_most=3)  # short reads past the size, too
        assert encode.read_capped(functools.partial(os.read, fd), 0, chunk_bytes=4) == b"x" * 100  # /proc-like: size 0
    finally:
        os.close(fd)
    assert calls[-1] == 4  # ended on an empty read


def test_a_local_file_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:  # sparse
        f.truncate(encode.MAX_FILE_BYTES + 5)
    calls = counted_reads(monkeypatch)
    with pytest.raises(ImageError) as error:
        read_bytes(ImageRef(str(huge), str(huge), origin="rows.csv:2"))  # size not listed
    assert str(error.value) == (f"file of {encode.MAX_FILE_BYTES + 5} bytes is over "
                                f"{encode.MAX_FILE_BYTES} bytes, larger than any image an "
                                f"endpoint takes: {huge} (row rows.csv:2)")
    assert calls == []


def test_read_capped_goes_on_after_a_short_read_from_a_pipe():
    read_end, write_end = os.pipe()  # a pipe's read returns what is there: a short read
    try:
        os.write(write_end, b"abc")
        os.close(write_end)
        assert encode.read_capped(functools.partial(os.read, read_end), 6) == b"abc"
    finally:
        os.close(read_end)


def test_read_capped_of_unknown_size_reads_chunks_to_the_end_or_past_the_cap(monkeypatch):
    assert encode.read_capped(io.BytesIO(b"x" * 100).read, chunk_bytes=7) == b"x" * 100
    monkeypatch.setattr(encode, "MAX_FILE_BYTES", 10)
    assert encode.read_capped(io.BytesIO(b"x" * 100).read, chunk_bytes=7) == b"x" * 11


def test_read_capped_stops_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "MAX_FILE_BYTES", 10)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert encode.read_capped(functools.partial(os.read, fd), 5, chunk_bytes=4) == b"x" * 11
    finally:
        os.close(fd)


def test_encode_instances_composite(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"text")
    big = tmp_path / "big.jpg"
    big.write_bytes(noisy_jpeg((200, 200)))
    refs = [ImageRef(str(good), str(good)), ImageRef(str(bad), str(bad)),
            ImageRef("row:1", None, "%%%"), ImageRef(str(big), str(big))]
    p = TestPipeline(runner=LOCAL_RUNNER)
    out = p | beam.Create(refs) | EncodeInstances(make_protocol("mlengine"), 2_000)
    assert_that(out.instances | beam.Map(lambda i: i.key), equal_to([str(good)]),
                label="instances")
    assert_that(out.failed | beam.Map(lambda r: (r["key"], r["stage"])),
                equal_to([(str(bad), "decode"), ("row:1", "read"), (str(big), "encode")]),
                label="failed")
    result = p.run()
    result.wait_until_finish()
    # each dead letter is counted under its own stage, and under no other
    assert {k: v for k, v in counters(result).items() if k.startswith("failed_")} == {
        "failed_decode": 1, "failed_read": 1, "failed_encode": 1}


# -- every protocol's encoding, against the local server ---------------------------------------

def post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=20) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("protocol_name,instance_format,image_size", [
    ("mlengine", "b64", None),
    ("mlengine", "named", None),
    ("mlengine", "tensor", (16, 16)),
    ("automl", "b64", None),
    ("vertex", "b64", None),
])
def test_each_encoding_is_understood_by_the_server(server, protocol_name, instance_format,
                                                   image_size):
    tensor = tensor_spec(image_size) if image_size else None
    protocol = make_protocol(protocol_name, instance_format, tensor=tensor)
    images = {"green": image_bytes("green", "PNG"), "blue": image_bytes("blue", "WEBP"),
              "yellow": image_bytes("yellow", "JPEG", mode="CMYK")}
    for label, data in images.items():
        instance = encode_instance(label, data, protocol, 1_500_000, image_size)
        response = post(server.endpoint(protocol_name), protocol.body([instance.body]))
        [parsed] = protocol.parse(response, 1)
        labels = getattr(parsed, "labels", parsed)
        assert max(labels, key=lambda ls: ls[1])[0] == label, (label, response)


def test_vertex_carries_the_right_mime_type():
    protocol = make_protocol("vertex")
    for fmt, mime in (("PNG", "image/png"), ("WEBP", "image/webp"), ("JPEG", "image/jpeg")):
        body = json.loads(encode_instance("k", image_bytes(fmt=fmt), protocol, 10**6).body)
        assert body["mimeType"] == mime
