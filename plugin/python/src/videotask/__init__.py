"""videotask: a Python client of the videotask sidecar (videotask.v1 gRPC API).

    from videotask import await_video_task, await_video_task_sync

    task = await await_video_task("proj_123", on_event=print)   # grpc.aio
    task = await_video_task_sync("proj_123", timeout=7200)      # blocking

Nothing here depends on a workflow engine: use it from scripts, Prefect,
Dagster, or an engine package (videotask_airflow builds on it). See
videotask.client for the reconnect rules and the errors.
"""

from videotask.client import (  # noqa: F401
    DEFAULT_TARGET,
    VideoTaskError,
    await_video_task,
    await_video_task_sync,
    close_shared_channels,
    get_video_task,
    get_video_task_sync,
    resolve_target,
    shared_channel,
    status_name,
    task_to_dict,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "VideoTaskError",
    "await_video_task",
    "await_video_task_sync",
    "close_shared_channels",
    "get_video_task",
    "get_video_task_sync",
    "resolve_target",
    "shared_channel",
    "status_name",
    "task_to_dict",
]
