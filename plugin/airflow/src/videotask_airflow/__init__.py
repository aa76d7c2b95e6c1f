"""videotask for Airflow: an operator that creates a video exactly once per
task instance, and a deferrable sensor and a trigger that await a
video-generation task through the videotask sidecar (videotask.v1 gRPC API).

    from videotask_airflow.sensors import VideoTaskSensor      # needs Airflow
    from videotask_airflow.operators import VideoGenerateOperator  # needs Airflow
    from videotask_airflow.triggers import VideoTaskTrigger    # needs Airflow

The client underneath is the videotask-client package (`import videotask`),
usable without Airflow; `videotask_airflow.client` is kept as its old name.
This module imports nothing from Airflow.
"""

__version__ = "0.2.0"


def get_provider_info():
    """What Airflow's ProvidersManager reads from the `apache_airflow_provider`
    entry point (airflow/provider_info.schema.json: "name" and "description"
    required, "package-name" equal to the distribution's name)."""
    return {
        "package-name": "videotask-airflow",
        "name": "videotask",
        "description": "Create video-generation tasks exactly once and await them "
                       "through the videotask sidecar: an operator, a deferrable "
                       "sensor and their trigger.",
        "versions": [__version__],
        "integrations": [{"integration-name": "videotask", "tags": ["service"]}],
        "operators": [{"integration-name": "videotask",
                       "python-modules": ["videotask_airflow.operators"]}],
        "sensors": [{"integration-name": "videotask",
                     "python-modules": ["videotask_airflow.sensors"]}],
        "triggers": [{"integration-name": "videotask",
                      "python-modules": ["videotask_airflow.triggers"]}],
    }
