"""The wire protocols, one module each: `google` (ML Engine `instances`, Vertex AI, AutoML
Vision) and `v2` (the Open Inference Protocol of KServe, Triton and MLServer), on `base`.
`make_protocol` is the one place a `--protocol` name becomes a Protocol."""
from typing import Optional

from protocols.base import INSTANCE_FORMATS, Protocol, PROTOCOLS
from protocols.google import AutoML, MLEngine, Vertex
from protocols.labels import LabelSpec
from protocols.v2 import V2

__all__ = ["INSTANCE_FORMATS", "PROTOCOLS", "Protocol", "make_protocol"]


def make_protocol(name: str, instance_format: str = "b64", labels: LabelSpec = LabelSpec(),
                  score_threshold: Optional[float] = None, keep_prediction: bool = True,
                  parameters: Optional[dict] = None, **v2_options) -> Protocol:
    """The protocol for `--protocol` and its flags (`v2_options`: see `protocols.v2.V2`)."""
    parameters = dict(parameters or {})
    if name == "mlengine":
        return MLEngine(instance_format, labels, keep_prediction, parameters)
    if name == "vertex":
        if score_threshold is not None:
            parameters.setdefault("confidenceThreshold", score_threshold)
        return Vertex(parameters, labels, keep_prediction)
    if name == "automl":
        if labels != LabelSpec():
            raise ValueError("--protocol automl answers one fixed shape (displayName, "
                             "score): --label_names, --label_names_file, --labels_field and "
                             "--scores_field do not apply")
        if parameters:
            raise ValueError("--parameters applies to mlengine, vertex and v2 (AutoML takes "
                             "--score_threshold)")
        return AutoML(score_threshold, keep_prediction)
    if name == "v2":
        tensor = v2_options.pop("tensor_dtype", "UINT8") if instance_format == "tensor" else None
        v2_options.pop("tensor_dtype", None)
        if instance_format == "named":
            raise ValueError("--protocol v2 takes --instance_format b64 or tensor")
        return V2(tensor_dtype=tensor, labels=labels, keep_prediction=keep_prediction,
                  parameters=parameters, **v2_options)
    raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
