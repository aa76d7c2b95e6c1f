"""The package itself: its wheel (with the client's) installed as pip would,
the provider entry point Airflow discovers, the old client import path, the
Airflow 2 and 3 import paths, no stand-in in production code."""

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
PLUGIN = os.path.dirname(PACKAGE_ROOT)
SRC = os.path.join(PACKAGE_ROOT, "src")
CLIENT_SRC = os.path.join(PLUGIN, "python", "src")
STAND_IN = os.path.join(HERE, "airflow_stub")


def run_python(code, path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)] + list(args), env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Both wheels, built offline as `./dev wheel` builds them and unpacked
    into one directory (a pure-Python wheel's install)."""
    wheels = tmp_path_factory.mktemp("wheels")
    target = tmp_path_factory.mktemp("site")
    for project in ("python", "airflow"):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--quiet", "--wheel-dir", str(wheels), "."],
            cwd=os.path.join(PLUGIN, project), check=True, timeout=120,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        subprocess.run(["rm", "-rf", "build"] + [
            os.path.join("src", n) for n in os.listdir(os.path.join(PLUGIN, project, "src"))
            if n.endswith(".egg-info")], cwd=os.path.join(PLUGIN, project), check=True)
    names = sorted(os.listdir(str(wheels)))
    assert names == ["videotask_airflow-0.2.0-py3-none-any.whl",
                     "videotask_client-0.1.0-py3-none-any.whl"], names
    for name in names:
        with zipfile.ZipFile(str(wheels / name)) as whl:
            whl.extractall(str(target))
    return str(target)


def test_airflow_discovers_the_provider(installed):
    """What ProvidersManager's discover_all_providers_from_packages does:
    every `apache_airflow_provider` entry point of the installed
    distributions is loaded and called; the dict must have "name" and
    "description" (provider_info.schema.json) and a "package-name" equal to
    the distribution's canonical name."""
    r = run_python("""
        import importlib.metadata as md, json, re, sys
        found = []
        for dist in md.distributions(path=[sys.argv[1]]):
            for ep in dist.entry_points:
                if ep.group == "apache_airflow_provider":
                    info = ep.load()()
                    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
                    found.append((name, dist.version, info))
        print(json.dumps(found))
    """, [installed], installed)
    assert r.returncode == 0, r.stderr
    [(name, version, info)] = __import__("json").loads(r.stdout)
    assert name == "videotask-airflow" == info["package-name"]
    assert info["name"] and info["description"]
    assert info["versions"] == [version] == ["0.2.0"]
    assert info["sensors"][0]["python-modules"] == ["videotask_airflow.sensors"]
    assert info["operators"][0]["python-modules"] == ["videotask_airflow.operators"]
    assert info["triggers"][0]["python-modules"] == ["videotask_airflow.triggers"]


def test_wheel_metadata(installed):
    with open(os.path.join(installed, "videotask_airflow-0.2.0.dist-info", "METADATA")) as f:
        requires = [line for line in f.read().splitlines() if line.startswith("Requires-Dist:")]
    assert "Requires-Dist: videotask-client (<0.2,>=0.1.0)" in requires, requires
    assert "Requires-Dist: apache-airflow (>=2.7) ; extra == 'airflow'" in requires, requires
    assert not os.path.exists(os.path.join(installed, "videotask_airflow", "_proto"))
    assert os.path.isfile(os.path.join(installed, "videotask", "_proto", "video_task_pb2.py"))


def test_installed_wheels_keep_the_old_imports(installed):
    r = run_python("""
        from videotask_airflow.client import (await_video_task, await_video_task_sync,
                                              task_to_dict, VideoTaskError)
        import videotask.client, videotask_airflow.client
        from videotask_airflow import client
        assert videotask_airflow.client is videotask.client is client
        assert await_video_task is videotask.client.await_video_task
        from videotask_airflow.sensors import VideoTaskSensor
        from videotask_airflow.triggers import VideoTaskTrigger
        from videotask_airflow.operators import VideoGenerateOperator
        from videotask.client import create_video_task_sync
        print("ok")
    """, [installed, STAND_IN])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_client_needs_no_airflow():
    r = run_python("""
        import sys, videotask_airflow, videotask_airflow.client
        assert "airflow" not in sys.modules
        try:
            import videotask_airflow.triggers
        except ModuleNotFoundError as e:
            assert e.name == "airflow", e
            print("ok")
    """, [SRC, CLIENT_SRC])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_airflow_3_paths_are_preferred():
    # airflow.sdk exists: the sensor's base and the exceptions come from it.
    r = run_python("""
        import airflow.sdk, airflow.sdk.exceptions
        from videotask_airflow import _airflow
        from videotask_airflow.sensors import VideoTaskSensor
        assert issubclass(VideoTaskSensor, airflow.sdk.BaseSensorOperator)
        from videotask_airflow.operators import VideoGenerateOperator
        assert issubclass(VideoGenerateOperator, airflow.sdk.BaseOperator)
        assert _airflow.AirflowSensorTimeout is airflow.sdk.exceptions.AirflowSensorTimeout
        assert _airflow.PokeReturnValue is airflow.sdk.PokeReturnValue
        print("ok")
    """, [SRC, CLIENT_SRC, STAND_IN])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_airflow_2_paths_without_the_sdk():
    r = run_python("""
        import sys
        sys.modules["airflow.sdk"] = None  # Airflow 2: no Task SDK
        import airflow.sensors.base, airflow.exceptions
        from videotask_airflow import _airflow
        from videotask_airflow.sensors import VideoTaskSensor
        assert VideoTaskSensor.__mro__[2] is airflow.sensors.base.BaseSensorOperator
        import airflow.models.baseoperator
        from videotask_airflow.operators import VideoGenerateOperator
        assert VideoGenerateOperator.__mro__[2] is airflow.models.baseoperator.BaseOperator
        assert _airflow.AirflowFailException is airflow.exceptions.AirflowFailException
        assert _airflow.PokeReturnValue is airflow.sensors.base.PokeReturnValue
        assert not hasattr(_airflow, "TaskDeferred")
        print("ok")
    """, [SRC, CLIENT_SRC, STAND_IN])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_deprecation_warning_on_airflow_3_2():
    """Airflow 3.2's airflow.exceptions hands out the moved exceptions through
    a module __getattr__ that warns (DeprecatedImportWarning, a
    DeprecationWarning); the package takes them from airflow.sdk.exceptions."""
    r = run_python("""
        import sys, types, warnings
        import airflow.exceptions as classes
        import airflow.sdk, airflow.sdk.exceptions, airflow.sensors.base, airflow.triggers.base
        moved = types.ModuleType("airflow.exceptions")

        def __getattr__(name):
            warnings.warn("airflow.exceptions.%s is deprecated" % name, DeprecationWarning)
            return getattr(classes, name)

        moved.__getattr__ = __getattr__
        sys.modules["airflow.exceptions"] = moved
        warnings.simplefilter("error")
        import videotask_airflow.sensors
        import videotask_airflow.operators
        print("ok")
    """, [SRC, CLIENT_SRC, STAND_IN])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_production_code_does_not_know_the_stand_in():
    for directory, _, names in os.walk(os.path.join(SRC, "videotask_airflow")):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    text = f.read()
                assert "airflow_stub" not in text and "stand-in" not in text.lower(), name


def test_version_matches_pyproject():
    import videotask_airflow

    with open(os.path.join(PACKAGE_ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert 'version = "%s"' % videotask_airflow.__version__ in f.read()
