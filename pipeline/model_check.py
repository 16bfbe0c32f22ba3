"""The start-up check of a `--protocol v2` model: server and model ready, and the protocol
completed from the model's metadata, before anything is sent. Blocking I/O on the launcher,
bounded in time and bytes (never on a worker)."""
import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any, List, Mapping, Optional, Sequence

from imaging.tensor import stated_by_shape, TensorRequest, TensorSpec
from protocols.embedding import EmbeddingSpec, stated_length, vector_output
from protocols.labels import LabelSpec
from protocols.v2 import model_path, TENSOR_DTYPES, V2


class NotReady(Exception):
    """The server or the model cannot take the job (one line for the user)."""


def check_model(protocol: V2, endpoint: str, headers: Optional[Mapping[str, str]] = None,
                timeout_s: float = 10.0, max_bytes: int = 1 << 20,
                tensors: Optional[TensorRequest] = None) -> V2:
    """Server ready, model ready, and the protocol completed from the model metadata (the
    input name when the model has one input; the output names for binary or classification
    outputs; for tensor instances, the layout, size and datatype the flags (`tensors`) leave
    open). NotReady when the server or model is not ready, ValueError when the model does
    not fit the flags."""
    where = model_path(endpoint)
    if where is None:
        raise ValueError(f"--protocol v2 needs an endpoint ending in "
                         f"/v2/models/NAME[/versions/V]/infer, not {endpoint!r}")
    base, model = where
    _get(base + "/v2/health/ready", "server", headers, timeout_s, max_bytes)
    _get(base + model + "/ready", f"model {model.split('/v2/models/', 1)[1]}", headers,
         timeout_s, max_bytes)
    metadata = _get(base + model, "model metadata", headers, timeout_s, max_bytes)
    inputs = _tensors(metadata, "inputs")
    name = protocol.input_name or _only_input(inputs)
    tensor = _input_tensor(protocol, name, inputs, tensors)
    listed = _tensors(metadata, "outputs")
    outputs = [t["name"] for t in listed]
    _check_fields(protocol.labels, outputs)
    if protocol.classification and not outputs:
        raise ValueError("--classification needs the output names, and the model metadata "
                         "lists none")
    wanted = outputs if (protocol.binary or protocol.classification) else ()
    return protocol.with_model(name, wanted, tensor, vector_spec(protocol, listed))


def vector_spec(protocol: V2, outputs: List[dict]) -> EmbeddingSpec:
    """Where the model's vector is, and its length when the metadata states it: the output
    --embedding_field names (which must be one), else the one output named like a vector
    when no labels flag names the outputs (`protocols.embedding.vector_output`)."""
    spec, labels = protocol.embedding, protocol.labels
    listed = {str(t["name"]): t for t in outputs}
    if spec.field:
        if listed and spec.field not in listed:
            raise ValueError(f"--embedding_field {spec.field}: the model's outputs are "
                             f"{', '.join(listed)}")
        length = stated_length(listed.get(spec.field, {}).get("shape"))
        return spec._replace(dimension=spec.dimension or length)
    if labels.labels_field or labels.scores_field:
        return spec
    found = vector_output(outputs)
    if found is None:
        return spec
    return spec._replace(field=found[0], dimension=found[1])


def _get(url: str, what: str, headers, timeout_s: float, max_bytes: int) -> Any:
    """GET `url`'s JSON within `timeout_s` in all (a watchdog shuts the socket at the
    deadline: a socket timeout only bounds each read) and at most `max_bytes` of body.
    NotReady, naming `what`, when it is not a 200 in time."""
    parts = urllib.parse.urlsplit(url)
    connection = (http.client.HTTPSConnection if parts.scheme == "https"
                  else http.client.HTTPConnection)(parts.netloc, timeout=timeout_s)
    late = threading.Event()
    watchdog = threading.Timer(timeout_s, _shut, (connection, late))
    watchdog.start()
    try:
        connection.connect()
        if late.is_set():  # the deadline passed before there was a socket to shut
            raise TimeoutError()
        connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")),
                           headers=dict(headers or {}))
        response = connection.getresponse()
        raw = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as e:
        if late.is_set():
            raise NotReady(f"{what} did not answer within {timeout_s:g} s: GET {url}")
        raise NotReady(f"{what} is not reachable: GET {url}: {str(e) or type(e).__name__}")
    finally:
        watchdog.cancel()
        connection.close()
    if response.status != 200:
        detail = raw[:200].decode("utf-8", "replace").strip()
        raise NotReady(f"{what} is not ready: GET {url} answered HTTP {response.status}"
                       + (f": {detail}" if detail else ""))
    if len(raw) > max_bytes:
        raise NotReady(f"{what} answered more than {max_bytes} bytes: GET {url}")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _shut(connection: http.client.HTTPConnection, late: threading.Event):
    """The deadline passed: end whatever read or write `connection` is blocked in."""
    late.set()
    sock = connection.sock  # read once: the caller may close the connection meanwhile
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _tensors(metadata: Any, field: str) -> List[dict]:
    items = metadata.get(field) if isinstance(metadata, dict) else None
    return [t for t in items or [] if isinstance(t, dict) and t.get("name")]


def _only_input(inputs: List[dict]) -> str:
    if len(inputs) == 1:
        return str(inputs[0]["name"])
    if not inputs:
        raise ValueError("the model metadata lists no inputs: name the image input with "
                         "--model_input")
    names = ", ".join(str(t["name"]) for t in inputs)
    raise ValueError(f"the model has several inputs ({names}): name the image input with "
                     f"--model_input")


def _check_fields(spec: LabelSpec, outputs: Sequence[str]):
    """--labels_field / --scores_field name outputs of the model (when its metadata lists
    them)."""
    for flag, name in (("--labels_field", spec.labels_field),
                       ("--scores_field", spec.scores_field)):
        if name and outputs and name not in outputs:
            raise ValueError(f"{flag} {name}: the model's outputs are {', '.join(outputs)}")


def _input_tensor(protocol: V2, name: str, inputs: List[dict],
                  tensors: Optional[TensorRequest]) -> Optional[TensorSpec]:
    """The model's input `name` takes what will be sent: BYTES image files, or a pixel
    tensor whose layout, size and datatype the metadata completes (for tensor instances)."""
    listed = {str(t["name"]): t for t in inputs}
    if listed and name not in listed:
        raise ValueError(f"--model_input {name}: the model's inputs are "
                         f"{', '.join(listed)}")
    datatype = str(listed.get(name, {}).get("datatype") or "")
    shape = listed.get(name, {}).get("shape")
    if protocol.instance_format != "tensor":
        if datatype and datatype != "BYTES":
            hint = (f"--instance_format tensor (the layout, size and {datatype} are read "
                    f"from the metadata)" if datatype in TENSOR_DTYPES
                    else "a client for that datatype")
            raise ValueError(f"model input {name} takes {datatype} {shape or ''}, not image "
                             f"files (BYTES): use {hint}")
        return None
    if datatype and datatype not in TENSOR_DTYPES:
        raise ValueError(f"model input {name} takes {datatype} {shape or ''}: tensor "
                         f"instances are {', '.join(TENSOR_DTYPES)}")
    request = tensors or TensorRequest()
    return request.spec(stated_by_shape(shape, datatype),
                        source=f"model input {name} ({datatype or '?'} {shape or '?'})")
