"""The session fixtures of the client's and the Airflow package's tests: the
real simulated upstream and sidecar (harness.py). A conftest imports them."""

import pytest

import harness
from videotask.client import close_shared_channels


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
