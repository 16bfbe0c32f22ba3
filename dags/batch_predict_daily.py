"""Airflow DAG: the batch prediction Flex Template once a day (docs/dataflow.md, "Scheduling a
daily run"; docs/crash-safety.md, "Scheduled runs").

Every run reads the whole image prefix and predicts only the images no earlier run predicted
or committed (`skip_existing`), under the run's day folder.

One day, one job:
- The job name and the output folder carry the same day, `data_interval_end` (UTC): on
  Airflow 2 (cron data intervals) that is the day the run starts, not the logical date (the
  day before); on Airflow 3 (cron trigger timetable) data_interval_end is the run's own time.
  A retry, even one that starts the next day, keeps both.
- `append_job_name=False`: the operator would otherwise add a random suffix to the job name.
  With the fixed name `batch-predict-YYYYMMDD`, Dataflow refuses to start a second job of that
  name while the first is still active, so a retry of an Airflow task that died while its job
  kept running fails to launch instead of predicting the same images twice; once that job has
  ended, the retry's `skip_existing` skips everything it committed.
- `max_active_runs=1` keeps two days' runs from overlapping.

Set these Airflow Variables: batch_predict_project, batch_predict_region,
batch_predict_bucket, batch_predict_endpoint, batch_predict_template (the gs:// path of the
template spec built with `gcloud dataflow flex-template build`) and
batch_predict_service_account. Install on the Airflow side:
`apache-airflow-providers-google` and `apache-airflow-providers-apache-beam` (the Google
provider's Dataflow operators import the Beam provider's hooks).
"""
import datetime

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowStartFlexTemplateOperator)

# Worker pool: 10 x n2-standard-4 = 40 SDK processes (one per vCPU) share QPS, so each
# process sends QPS / 40 requests per second and the job never exceeds QPS.
MAX_WORKERS = 10
MACHINE_TYPE = "n2-standard-4"

# The run's day, the same on Airflow 2 and 3 and across retries (see the module doc).
DAY = "{{ data_interval_end | ds }}"
DAY_NODASH = "{{ data_interval_end | ds_nodash }}"

# Template parameters (metadata.json): strings, rendered by Airflow's Jinja.
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
    "output": "gs://{{ var.value.batch_predict_bucket }}/predictions/" + DAY + "/predictions",
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
                "jobName": "batch-predict-" + DAY_NODASH,
                "containerSpecGcsPath": "{{ var.value.batch_predict_template }}",
                "parameters": PARAMETERS,
                "environment": ENVIRONMENT,
            }
        },
        wait_until_finished=True,
        append_job_name=False,
    )
