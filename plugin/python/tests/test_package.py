"""The client package itself: generated stubs up to date, nothing of a
workflow engine imported, the version in one place."""

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
SRC = os.path.join(PACKAGE_ROOT, "src")
sys.path.insert(0, PACKAGE_ROOT)

import gen_stubs  # noqa: E402


def test_generated_stubs_match_the_proto():
    """Fails when proto/videotask/v1/video_task.proto changed without
    `plugin/python/gen_stubs.py` being run (or a stub was edited by hand)."""
    proto_root = gen_stubs.find_proto_root()
    assert proto_root is not None
    stale = gen_stubs.stale(gen_stubs.generate(proto_root), gen_stubs.SOURCE_OUT)
    assert stale == [], "stale stubs %s: run plugin/python/gen_stubs.py" % stale


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


def test_imports_no_workflow_engine():
    r = run_python("""
        import sys, videotask, videotask.client
        assert videotask.await_video_task is videotask.client.await_video_task
        assert not [m for m in sys.modules if m.split(".")[0] in ("airflow", "videotask_airflow")]
        print("ok")
    """, [SRC])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_version_matches_pyproject():
    import videotask

    with open(os.path.join(PACKAGE_ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert 'version = "%s"' % videotask.__version__ in f.read()
