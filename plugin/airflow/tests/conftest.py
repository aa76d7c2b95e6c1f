"""Test setup: the package from the source tree, the Airflow STAND-IN
(tests/airflow_stub, not Airflow: see its README) on sys.path, and the real
sidecar and simulated upstream as session fixtures (see harness.py)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "airflow_stub"))  # the stand-in, for tests only
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from videotask_airflow.client import close_shared_channels  # noqa: E402


@pytest.fixture(scope="session")
def sim():
    s = harness.Sim("empty")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sidecar(sim):
    s = harness.Sidecar(sim)
    yield s
    s.stop()


@pytest.fixture
def start_sidecar(sim):
    """Starts extra sidecars for one test; stops them after it."""
    started = []

    def start(**kwargs):
        s = harness.Sidecar(sim, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(autouse=True)
async def _close_channels():
    """Each test runs in its own event loop: close the loop's shared channels."""
    yield
    await close_shared_channels()
