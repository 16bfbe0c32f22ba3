"""PackRequests: both caps hold, exactly measured, and nothing is lost across bundles."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from tests.helpers import LOCAL_RUNNER
from apache_beam.testing.util import assert_that, equal_to

from transforms.pack import PackRequests, pack
from protocols import make_protocol
from core.records import Instance


def instances(sizes):
    return [Instance(f"k{i}", b'{"b64":"' + b"A" * size + b'"}') for i, size in enumerate(sizes)]


def test_pack_respects_count_and_exact_bytes():
    protocol = make_protocol("mlengine")
    items = instances([100, 300, 50, 900, 10, 10, 10, 10, 10, 400])
    requests = list(pack(items, protocol, max_instances=3, max_bytes=1000))
    for request in requests:
        body = protocol.body(request.instances)
        assert len(request.keys) <= 3
        assert len(body) <= 1000
        assert protocol.body_size([len(i) for i in request.instances]) == len(body)
    assert [k for r in requests for k in r.keys] == [i.key for i in items]


def test_automl_is_one_image_per_request():
    requests = list(pack(instances([10] * 5), make_protocol("automl"), 32, 10_000))
    assert [len(r.keys) for r in requests] == [1] * 5


def test_pack_requests_in_a_pipeline_keeps_every_key_once():
    protocol = make_protocol("vertex")
    items = instances([40] * 23)
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        keys = (p | beam.Create(items)
                | PackRequests(protocol, max_instances=4, max_bytes=10_000)
                | beam.FlatMap(lambda r: r.keys))
        assert_that(keys, equal_to([i.key for i in items]))


def test_pack_never_breaks_a_cap_on_random_sizes():
    import random
    rng = random.Random(5)
    for protocol in (make_protocol("mlengine"), make_protocol("vertex", score_threshold=0.5)):
        for _ in range(50):
            max_instances, max_bytes = rng.randint(1, 8), rng.randint(300, 3000)
            prefix, suffix = protocol.body_parts()
            room = max_bytes - len(prefix) - len(suffix) - len(b'{"b64":""}')
            items = instances([rng.randint(0, room) for _ in range(rng.randint(0, 40))])
            requests = list(pack(items, protocol, max_instances, max_bytes))
            for request in requests:
                assert 1 <= len(request.keys) <= max_instances
                assert len(protocol.body(request.instances)) <= max_bytes
            assert [k for r in requests for k in r.keys] == [i.key for i in items]
            for request, following in zip(requests, requests[1:]):  # each one filled up
                with_next = request.instances + following.instances[:1]
                assert (len(request.keys) == max_instances
                        or len(protocol.body(with_next)) > max_bytes)


def test_a_request_fills_up_to_exactly_the_byte_cap():
    protocol = make_protocol("mlengine")
    items = instances([100, 100, 100, 100])
    exact = len(protocol.body([i.body for i in items[:3]]))
    requests = list(pack(items, protocol, max_instances=32, max_bytes=exact))
    assert [len(r.keys) for r in requests] == [3, 1]
    assert len(protocol.body(requests[0].instances)) == exact


def test_partial_requests_are_flushed_at_each_bundle_end():
    from transforms.pack import _PackFn
    protocol = make_protocol("mlengine")
    fn = _PackFn(protocol, 4, 10_000)
    items = instances([20] * 11)
    out = []
    for bundle in (items[:6], items[6:]):  # 6 = 4 + a partial 2; 5 = 4 + a partial 1
        fn.start_bundle()
        for item in bundle:
            out.extend(fn.process(item))
        out.extend(v.value for v in fn.finish_bundle())
    assert [len(r.keys) for r in out] == [4, 2, 4, 1]
    assert [k for r in out for k in r.keys] == [i.key for i in items]


def test_passthrough_values_stay_aligned_with_their_keys():
    items = [i._replace(fields={"n": str(n)}) for n, i in enumerate(instances([10] * 7))]
    requests = list(pack(items, make_protocol("mlengine"), 3, 10_000))
    assert [dict(zip(r.keys, r.fields)) for r in requests] == [
        {f"k{n}": {"n": str(n)} for n in range(start, min(start + 3, 7))}
        for start in (0, 3, 6)]
    assert all(r.fields is None for r in pack(instances([10] * 4), make_protocol("mlengine"),
                                              3, 10_000))
