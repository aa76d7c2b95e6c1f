"""videotask: a Python client of the videotask sidecar (videotask.v1 gRPC API).

    from videotask import await_video_task, await_video_task_sync

    task = await await_video_task("proj_123", on_event=print)   # grpc.aio
    task = await_video_task_sync("proj_123", timeout=7200)      # blocking

Nothing here depends on a workflow engine: use it from scripts, Prefect,
Dagster, or an engine package (videotask_airflow builds on it). See
videotask.client for the reconnect rules and the errors.
"""

from videotask.client import *  # noqa: F401,F403  (the client's public names)
from videotask.client import __all__  # noqa: F401

__version__ = "0.1.0"
