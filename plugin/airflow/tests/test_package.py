"""The package itself: generated stubs up to date, importable without
Airflow, the Airflow 2 and 3 import paths, no stand-in in production code."""

import os
import subprocess
import sys
import textwrap


HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
SRC = os.path.join(PACKAGE_ROOT, "src")
STAND_IN = os.path.join(HERE, "airflow_stub")
sys.path.insert(0, PACKAGE_ROOT)

import gen_stubs  # noqa: E402


def test_generated_stubs_match_the_proto():
    """Fails when proto/videotask/v1/video_task.proto changed without
    `plugin/airflow/gen_stubs.py` being run (or a stub was edited by hand)."""
    proto_root = gen_stubs.find_proto_root()
    assert proto_root is not None
    stale = gen_stubs.stale(gen_stubs.generate(proto_root), gen_stubs.SOURCE_OUT)
    assert stale == [], "stale stubs %s: run plugin/airflow/gen_stubs.py" % stale


def test_stale_stubs_are_detected(tmp_path):
    files = gen_stubs.generate(gen_stubs.find_proto_root())
    gen_stubs.write(files, str(tmp_path))
    assert gen_stubs.stale(files, str(tmp_path)) == []
    pb2 = tmp_path / "video_task_pb2.py"
    pb2.write_text(pb2.read_text() + "# edited by hand\n")
    assert gen_stubs.stale(files, str(tmp_path)) == ["video_task_pb2.py"]


def run_python(code, path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_client_needs_no_airflow():
    r = run_python("""
        import sys, videotask_airflow, videotask_airflow.client
        assert "airflow" not in sys.modules
        try:
            import videotask_airflow.triggers
        except ModuleNotFoundError as e:
            assert e.name == "airflow", e
            print("ok")
    """, [SRC])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_airflow_3_bases_are_preferred():
    # airflow.sdk (Airflow 3's Task SDK) exists: the sensor's base comes from it.
    r = run_python("""
        import sys, types
        import airflow.sensors.base
        sdk = types.ModuleType("airflow.sdk")
        class BaseSensorOperator(airflow.sensors.base.BaseSensorOperator):
            pass
        sdk.BaseSensorOperator = BaseSensorOperator
        sys.modules["airflow.sdk"] = sdk
        from videotask_airflow.sensors import VideoTaskSensor
        assert VideoTaskSensor.__mro__[1] is BaseSensorOperator, VideoTaskSensor.__mro__
        print("ok")
    """, [SRC, STAND_IN])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_airflow_2_bases_without_the_sdk():
    r = run_python("""
        import airflow.sensors.base
        from videotask_airflow.sensors import VideoTaskSensor
        assert VideoTaskSensor.__mro__[1] is airflow.sensors.base.BaseSensorOperator
        print("ok")
    """, [SRC, STAND_IN])
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
