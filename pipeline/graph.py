"""build_pipeline: wires the stages for a JobConfig. No I/O happens here."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.client import ClientSettings
from transforms.encode import EncodeInstances
from transforms.existing import SelectTodo
from transforms.pack import PackRequests
from transforms.passthrough import JoinPassthrough
from transforms.predict import Predict, PredictSettings
from transforms.read import ReadInputs, RowSpec
from transforms.retry import RetryPolicy
from transforms.write import WriteDeadLetters, WriteResults


def predict_settings(config: JobConfig) -> PredictSettings:
    client = ClientSettings(
        endpoint=config.endpoint,
        protocol=config.protocol,
        max_concurrent_requests=config.max_concurrent_requests,
        request_timeout_s=config.request_timeout_s,
        retry=RetryPolicy(max_retries=config.max_retries),
        auth=config.auth,
    )
    return PredictSettings(client=client, qps_share=config.qps_share)


def select_todo(refs, config: JobConfig):
    """The refs to predict: all, or (backfill) those not yet written / in the dead letters."""
    if not (config.skip_existing or config.retry_dead_letters):
        return refs
    return (refs | "SelectTodo" >> SelectTodo(
        config.output_template if config.skip_existing else None,
        config.retry_dead_letters)).refs


def with_passthrough(predictions, refs, config: JobConfig):
    """Predictions with their rows' --passthrough_fields joined back by key."""
    if not config.passthrough_fields:
        return predictions
    return (predictions, refs) | "JoinPassthrough" >> JoinPassthrough(
        config.passthrough_fields)


def build_pipeline(p: beam.Pipeline, config: JobConfig):
    """Read -> encode -> pack -> predict -> write, with every failure to the dead letters."""
    inputs = p | "ReadInputs" >> ReadInputs(
        config.inputs, config.input_format,
        RowSpec(config.uri_field, config.b64_field, config.key_field))
    todo = select_todo(inputs.refs, config)
    encoded = todo | "EncodeInstances" >> EncodeInstances(
        config.protocol, config.max_request_bytes, config.image_size)
    predicted = (encoded.instances
                 | "PackRequests" >> PackRequests(
                     config.protocol, config.max_instances_per_request,
                     config.max_request_bytes)
                 | "Predict" >> Predict(predict_settings(config)))
    with_passthrough(predicted.predictions, todo, config) | "WriteResults" >> WriteResults(
        config.output_run_prefix, config.output_format, config.passthrough_fields,
        config.bigquery)
    (inputs.failed, encoded.failed, predicted.failed) | "WriteDeadLetters" >> WriteDeadLetters(
        config.errors_run_prefix)
    return p
