"""Test setup: this package and the client (plugin/python) from the source
tree, the Airflow STAND-IN (tests/airflow_stub, not Airflow: see its README)
on sys.path, and the client's harness and fixtures (the real sidecar and
simulated upstream; plugin/python/tests)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.dirname(os.path.dirname(HERE))
PYTHON_TESTS = os.path.join(PLUGIN, "python", "tests")
sys.path.insert(0, os.path.join(HERE, "airflow_stub"))  # the stand-in, for tests only
sys.path.insert(0, os.path.join(PLUGIN, "python", "src"))
sys.path.insert(0, os.path.join(PLUGIN, "airflow", "src"))
sys.path.insert(0, PYTHON_TESTS)
sys.path.insert(0, HERE)

from fixtures import _close_channels, sidecar, sim, start_sidecar  # noqa: E402,F401
