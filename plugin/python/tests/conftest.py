"""Test setup: the client from the source tree, and the real sidecar and
simulated upstream as session fixtures (fixtures.py, harness.py). The Airflow
package's tests use the same harness and fixtures."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

from fixtures import _close_channels, sidecar, sim, start_sidecar  # noqa: E402,F401
