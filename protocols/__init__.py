"""The wire protocols, one module each: `google` (ML Engine `instances`, Vertex AI, AutoML
Vision) and `v2` (the Open Inference Protocol of KServe, Triton and MLServer), on `base`.
`make_protocol` is the one place a `--protocol` name becomes a Protocol."""
from typing import Optional

from imaging.tensor import TensorSpec
from protocols.base import INSTANCE_FORMATS, Protocol, PROTOCOLS
from protocols.embedding import EmbeddingSpec
from protocols.google import AutoML, is_multimodal_endpoint, MLEngine, Multimodal, Vertex
from protocols.labels import LabelSpec
from protocols.v2 import V2

__all__ = ["INSTANCE_FORMATS", "PROTOCOLS", "Protocol", "is_multimodal_endpoint",
           "make_protocol"]


def make_protocol(name: str, instance_format: str = "b64", labels: LabelSpec = LabelSpec(),
                  score_threshold: Optional[float] = None, keep_prediction: bool = True,
                  parameters: Optional[dict] = None, tensor: Optional[TensorSpec] = None,
                  tensor_input_name: str = "", embedding: EmbeddingSpec = EmbeddingSpec(),
                  send_uri: bool = False, **v2_options) -> Protocol:
    """The protocol for `--protocol` and its flags (`tensor`: how tensor instances are
    prepared; `embedding`: where the vector is; `send_uri`: multimodal gs:// inputs sent as
    their URI; `v2_options`: see `protocols.v2.V2`)."""
    parameters = dict(parameters or {})
    if send_uri and not (name == "vertex" and instance_format == "multimodal"):
        raise ValueError("--send_uri applies to --protocol vertex --instance_format "
                         "multimodal")
    if instance_format == "multimodal":
        if name != "vertex":
            raise ValueError("--instance_format multimodal goes with --protocol vertex")
        if labels != LabelSpec() or score_threshold is not None:
            raise ValueError("multimodal embeddings have no labels: the label flags and "
                             "--score_threshold do not apply")
        return Multimodal(parameters, keep_prediction, embedding, send_uri)
    if name == "mlengine":
        return MLEngine(instance_format, labels, keep_prediction, parameters, tensor,
                        tensor_input_name, embedding)
    if tensor is not None and name != "v2":
        raise ValueError(f"--protocol {name} sends image files: tensor instances go with "
                         f"--protocol mlengine (Vertex custom containers, TF Serving) or v2")
    if tensor_input_name:
        raise ValueError("--tensor_input_name applies to --protocol mlengine")
    if name == "vertex":
        if score_threshold is not None:
            parameters.setdefault("confidenceThreshold", score_threshold)
        return Vertex(parameters, labels, keep_prediction, embedding)
    if name == "automl":
        if labels != LabelSpec():
            raise ValueError("--protocol automl answers one fixed shape (displayName, "
                             "score): --label_names, --label_names_file, --labels_field and "
                             "--scores_field do not apply")
        if parameters:
            raise ValueError("--parameters applies to mlengine, vertex and v2 (AutoML takes "
                             "--score_threshold)")
        if embedding.field:
            raise ValueError("--protocol automl answers labels only: --embedding_field "
                             "does not apply")
        return AutoML(score_threshold, keep_prediction)
    if name == "v2":
        return V2(instance_format=instance_format, tensor=tensor, labels=labels,
                  keep_prediction=keep_prediction, parameters=parameters,
                  embedding=embedding, **v2_options)
    raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
