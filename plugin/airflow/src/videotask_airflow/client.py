"""Moved to the videotask-client package: `videotask.client`.

`videotask_airflow.client` stays importable for existing code and is the
same module object as `videotask.client` (every name, the same functions).
"""

import sys

import videotask.client as _client

sys.modules[__name__] = _client
