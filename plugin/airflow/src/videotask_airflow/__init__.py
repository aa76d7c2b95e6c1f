"""videotask for Airflow: a deferrable sensor and a trigger that await a
video-generation task through the videotask sidecar (videotask.v1 gRPC API).

    from videotask_airflow.sensors import VideoTaskSensor      # needs Airflow
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
        "description": "Await video-generation tasks through the videotask sidecar: "
                       "a deferrable sensor and its trigger.",
        "versions": [__version__],
        "integrations": [{"integration-name": "videotask", "tags": ["service"]}],
        "sensors": [{"integration-name": "videotask",
                     "python-modules": ["videotask_airflow.sensors"]}],
        "triggers": [{"integration-name": "videotask",
                      "python-modules": ["videotask_airflow.triggers"]}],
    }
