"""The wire protocols, one module each: `google` (ML Engine `instances`, Vertex AI, AutoML
Vision) and `v2` (the Open Inference Protocol of KServe, Triton and MLServer), on `base`.
`make_protocol` is the one place a `--protocol` name becomes a Protocol."""
from typing import Optional

from imaging.tensor import TensorSpec
from protocols.base import INSTANCE_FORMATS, Protocol, PROTOCOLS
from protocols.google import AutoML, MLEngine, Vertex
from protocols.labels import LabelSpec
from protocols.v2 import V2

__all__ = ["INSTANCE_FORMATS", "PROTOCOLS", "Protocol", "make_protocol"]


def make_protocol(name: str, instance_format: str = "b64", labels: LabelSpec = LabelSpec(),
                  score_threshold: Optional[float] = None, keep_prediction: bool = True,
                  parameters: Optional[dict] = None, tensor: Optional[TensorSpec] = None,
                  tensor_input_name: str = "", **v2_options) -> Protocol:
    """The protocol for `--protocol` and its flags (`tensor`: how tensor instances are
    prepared; `v2_options`: see `protocols.v2.V2`)."""
    parameters = dict(parameters or {})
    if name == "mlengine":
        return MLEngine(instance_format, labels, keep_prediction, parameters, tensor,
                        tensor_input_name)
    if tensor is not None and name != "v2":
        raise ValueError(f"--protocol {name} sends image files: tensor instances go with "
                         f"--protocol mlengine (Vertex custom containers, TF Serving) or v2")
    if tensor_input_name:
        raise ValueError("--tensor_input_name applies to --protocol mlengine")
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
        return V2(instance_format=instance_format, tensor=tensor, labels=labels,
                  keep_prediction=keep_prediction, parameters=parameters, **v2_options)
    raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
