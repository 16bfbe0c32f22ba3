"""build_pipeline: wires the stages for a JobConfig. No I/O happens here."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.client import ClientSettings
from transforms.encode import EncodeInstances
from transforms.pack import PackRequests
from transforms.predict import Predict, PredictSettings
from transforms.read import ReadImages, pattern_for
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


def build_pipeline(p: beam.Pipeline, config: JobConfig):
    """Read -> encode -> pack -> predict -> write, with every failure to the dead letters."""
    refs = p | "ReadImages" >> ReadImages([pattern_for(i) for i in config.inputs])
    encoded = refs.refs | "EncodeInstances" >> EncodeInstances(
        config.protocol, config.max_request_bytes, config.image_size)
    predicted = (encoded.instances
                 | "PackRequests" >> PackRequests(
                     config.protocol, config.max_instances_per_request,
                     config.max_request_bytes)
                 | "Predict" >> Predict(predict_settings(config)))
    predicted.predictions | "WriteResults" >> WriteResults(
        config.output_run_prefix, config.output_format)
    (encoded.failed, predicted.failed) | "WriteDeadLetters" >> WriteDeadLetters(
        config.errors_run_prefix)
    return p
