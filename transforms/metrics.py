"""Beam metrics of the pipeline, all under one namespace so the launcher can total them."""
from apache_beam.metrics import Metrics

NAMESPACE = "batch_predict"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    return Metrics.distribution(NAMESPACE, name)
