"""PackRequests: instances -> requests capped by instance count AND exact body bytes.

Packing happens inside each bundle, next to the request, so no shuffle ever holds image
bytes. A partial request is flushed when the bundle ends: nothing is lost or duplicated
across bundle boundaries.
"""
from typing import Iterator, List, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from core.records import Instance, PredictRequest
from protocols.base import Protocol


class Packer:
    """Accumulates instances; hands out a request whenever the next one would break a cap.

    The body size is counted exactly (`Protocol.request_size`). An instance too large for any
    request on its own (which EncodeInstances never lets through) still goes alone, and the
    endpoint refuses it.
    """

    def __init__(self, protocol: Protocol, max_instances: int, max_bytes: int):
        self._max_instances = min(max_instances, protocol.max_instances or max_instances)
        self._max_bytes = max_bytes
        self._protocol = protocol
        self._keys: List[str] = []
        self._bodies: List[bytes] = []
        self._fields: List[Optional[dict]] = []
        self._size = 0

    def add(self, instance: Instance) -> Optional[PredictRequest]:
        """Add one instance; returns the request it closed, if adding it closed one."""
        closed = None
        if self._keys and (len(self._keys) >= self._max_instances
                           or self._size_with(instance) > self._max_bytes):
            closed = self.flush()
        self._keys.append(instance.key)
        self._bodies.append(instance.body)
        self._fields.append(instance.fields)
        self._size += len(instance.body)
        return closed

    def flush(self) -> Optional[PredictRequest]:
        if not self._keys:
            return None
        fields = tuple(self._fields) if any(self._fields) else None
        request = PredictRequest(tuple(self._keys), tuple(self._bodies), fields)
        self._keys, self._bodies, self._fields, self._size = [], [], [], 0
        return request

    def _size_with(self, instance: Instance) -> int:
        """The exact body size of the open request with `instance` added."""
        return self._protocol.request_size(len(self._keys) + 1, self._size + len(instance.body))


def pack(instances, protocol: Protocol, max_instances: int,
         max_bytes: int) -> Iterator[PredictRequest]:
    """All instances packed into requests (a pure helper, for tests and benchmarks)."""
    packer = Packer(protocol, max_instances, max_bytes)
    for instance in instances:
        request = packer.add(instance)
        if request:
            yield request
    request = packer.flush()
    if request:
        yield request


class _PackFn(beam.DoFn):
    def __init__(self, protocol: Protocol, max_instances: int, max_bytes: int):
        self._args = (protocol, max_instances, max_bytes)
        self._packer = None

    def start_bundle(self):
        self._packer = Packer(*self._args)

    def process(self, instance: Instance):
        request = self._packer.add(instance)
        if request:
            yield request

    def finish_bundle(self):
        request = self._packer.flush()
        if request:
            yield GlobalWindows.windowed_value(request)


class PackRequests(beam.PTransform):
    """Instance -> PredictRequest, each within both caps."""

    def __init__(self, protocol: Protocol, max_instances: int, max_bytes: int):
        super().__init__()
        self._fn = _PackFn(protocol, max_instances, max_bytes)

    def expand(self, instances):
        return instances | "Pack" >> beam.ParDo(self._fn)
