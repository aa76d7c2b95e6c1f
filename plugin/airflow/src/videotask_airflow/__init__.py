"""videotask for Airflow: a deferrable sensor and a trigger that await a
video-generation task through the videotask sidecar (videotask.v1 gRPC API).

    from videotask_airflow.sensors import VideoTaskSensor      # needs Airflow
    from videotask_airflow.triggers import VideoTaskTrigger    # needs Airflow
    from videotask_airflow.client import await_video_task      # no Airflow needed

This module imports nothing from Airflow, so that the client works in plain
scripts, Prefect or Dagster.
"""

__version__ = "0.1.0"
