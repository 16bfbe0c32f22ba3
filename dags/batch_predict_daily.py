"""Airflow DAG: the batch prediction Flex Template once a day (docs/dataflow.md, "Scheduling a daily run").

Every run reads the whole image prefix and predicts only the images no earlier run predicted
(`skip_existing`); it writes them under the day's folder (`{date}`, filled in by the pipeline
at launch, UTC), so each day's new predictions sit in their own folder and a retried or
backfilled run adds only what is missing. `max_active_runs=1` keeps two runs from predicting
the same new images at once.

Set these Airflow Variables: batch_predict_project, batch_predict_region,
batch_predict_bucket, batch_predict_endpoint, batch_predict_template (the gs:// path of the
template spec built with `gcloud dataflow flex-template build`) and
batch_predict_service_account. Needs apache-airflow-providers-google.
"""
import datetime

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowStartFlexTemplateOperator)

# Worker pool: 10 x n2-standard-4 = 40 SDK processes (one per vCPU) share QPS, so each
# process sends QPS / 40 requests per second and the job never exceeds QPS.
MAX_WORKERS = 10
MACHINE_TYPE = "n2-standard-4"

# Template parameters (metadata.json): strings, rendered by Airflow's Jinja; `{date}` is
# single-braced, so Jinja leaves it for the pipeline.
PARAMETERS = {
    "input": "gs://{{ var.value.batch_predict_bucket }}/images/**",
    "endpoint": "{{ var.value.batch_predict_endpoint }}",
    "protocol": "vertex",
    "max_instances_per_request": "1",
    "max_concurrent_requests": "16",
    "qps": "20",
    "qps_worker_processes": "40",
    "max_retries": "5",
    "auth": "adc",
    "output": "gs://{{ var.value.batch_predict_bucket }}/predictions/{date}/predictions",
    "output_format": "both",
    "skip_existing": "true",
}

ENVIRONMENT = {
    "maxWorkers": MAX_WORKERS,
    "machineType": MACHINE_TYPE,
    "serviceAccountEmail": "{{ var.value.batch_predict_service_account }}",
    "tempLocation": "gs://{{ var.value.batch_predict_bucket }}/dataflow/tmp",
    "stagingLocation": "gs://{{ var.value.batch_predict_bucket }}/dataflow/staging",
}

with DAG(
    dag_id="batch_predict_daily",
    description="Daily batch image prediction on Dataflow (Flex Template)",
    schedule="0 3 * * *",  # 03:00 UTC every day
    start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": datetime.timedelta(minutes=15)},
    tags=["dataflow", "prediction"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="batch_predict",
        project_id="{{ var.value.batch_predict_project }}",
        location="{{ var.value.batch_predict_region }}",
        body={
            "launchParameter": {
                "jobName": "batch-predict-{{ ds_nodash }}",
                "containerSpecGcsPath": "{{ var.value.batch_predict_template }}",
                "parameters": PARAMETERS,
                "environment": ENVIRONMENT,
            }
        },
        wait_until_finished=True,
    )
