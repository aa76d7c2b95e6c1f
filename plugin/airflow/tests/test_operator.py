"""VideoGenerateOperator against the real sidecar and the simulated vendor's
create endpoints, driven as Airflow drives it (tests/engine.py: template
rendering, execute, the triggerer, resume_execution, retries with the same
context), on the Airflow STAND-IN of tests/airflow_stub (Airflow cannot be
installed here). Every test runs twice: as Airflow 2.10 and as Airflow 3.

Where the request_id comes from (request_id_for): context["ti"]'s dag_id,
task_id, run_id and map_index, Airflow 2's task_instance primary key
(apache/airflow airflow/models/taskinstance.py: TaskInstance's columns
task_id, dag_id, run_id, map_index with primary_key=True, map_index
server_default -1; try_number is a plain column, and task_instance_history
adds it to that key, one row per try) and Airflow 3's TaskInstance of the
execution API (task-sdk/src/airflow/sdk/api/datamodels/_generated.py: id,
task_id, dag_id, run_id, try_number, map_index = -1), which the task runner's
RuntimeTaskInstance extends and puts in the context as "ti" and
"task_instance" beside "run_id" (task-sdk/src/airflow/sdk/execution_time/
task_runner.py, get_template_context). `id` is left out: Airflow 3 gives
each try its own."""

import asyncio
import json
import signal
import threading
import time
from datetime import timedelta

import pytest

import engine
import harness
from airflow import _stub
from airflow.exceptions import (  # the stand-in
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
)
from harness import HOLD_PROCESSING
from videotask_airflow.operators import (
    VideoCreateOutcomeUnknown,
    VideoCreateRefused,
    VideoGenerateOperator,
    request_id_for,
)
from videotask_airflow.sensors import VideoTaskSensor
from videotask_airflow.triggers import VideoTaskTrigger

LIMIT = 30.0


@pytest.fixture(scope="module")
def sidecar(sim):
    s = harness.Sidecar(sim, extra_args=["--poll_interval=50ms"])
    yield s
    s.stop()


@pytest.fixture(autouse=True, params=[2, 3], ids=["airflow2", "airflow3"])
def major(request):
    _stub.use_major(request.param)
    yield request.param
    _stub.use_major(3)


@pytest.fixture(autouse=True)
def no_create_faults(sim):
    yield
    sim.clear_faults()


def P(name):
    """A prompt of this major's run: the sim's creates are found by prompt."""
    return "%s-a%d" % (name, _stub.major())


def ctx(name, **kwargs):
    """The context of a task instance of its own (its own run_id)."""
    kwargs.setdefault("run_id", "manual__%s" % P(name))
    return engine.context(**kwargs)


def generate(target, prompt, family="videos", task_id="generate", **kwargs):
    body = kwargs.pop("body", {"model": "videos", "prompt": prompt, "duration": 10,
                               "ratio": "16:9"})
    return VideoGenerateOperator(task_id=task_id, family=family, body=body, target=target,
                                 **kwargs)


def created(sim, prompt):
    """The ids of the tasks the vendor created for `prompt`."""
    return [c["id"] for c in sim.creates(prompt) if c["id"]]


async def resumed(deferral, limit=LIMIT):
    """(next_method, next_kwargs) once the deferral's trigger fired."""
    return await asyncio.wait_for(engine.run_in_triggerer(deferral), limit)


def without_observe_time(task):
    return {k: v for k, v in task.items() if k != "observeTime"}


# Create, then wait.

def test_creates_then_waits_in_the_worker(sim, sidecar):
    c = ctx("op-worker")
    outcome = engine.run_task(generate(sidecar.target, P("op-worker"), deferrable=False,
                                       timeout=30), c)
    assert outcome.state == "success", outcome
    [task_id] = created(sim, P("op-worker"))
    assert task_id.startswith("proj_sim_")
    assert outcome.result["id"] == task_id
    assert outcome.result["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % task_id
    json.dumps(outcome.result)  # goes to XCom
    # The sensor's payload for the same task.
    sensed = engine.run_task(VideoTaskSensor(task_id="wait", video_task_id=task_id,
                                             target=sidecar.target, deferrable=False))
    assert without_observe_time(sensed.result) == without_observe_time(outcome.result)


async def test_creates_then_defers_to_the_trigger(sim, sidecar):
    c = ctx("op-deferred")
    op = generate(sidecar.target, P("op-deferred"), family="sora", deferrable=True,
                  timeout=timedelta(hours=1))
    outcome = engine.run_task(op, c)
    assert outcome.state == "deferred", outcome
    [task_id] = created(sim, P("op-deferred"))
    assert task_id.startswith("video_sim_")
    deferral = outcome.deferred
    assert isinstance(deferral.trigger, VideoTaskTrigger)
    assert deferral.method_name == "execute_complete"
    assert deferral.timeout == timedelta(hours=1)
    assert deferral.trigger.serialize()[1] == {
        "video_task_id": task_id, "target": sidecar.target, "give_up_after": None}
    next_method, next_kwargs = await resumed(deferral)
    # A new operator instance resumes, as after a deferral; nothing is created again.
    again = generate(sidecar.target, P("op-deferred"), family="sora", deferrable=True)
    outcome = engine.run_task(again, c, next_method=next_method, next_kwargs=next_kwargs)
    assert outcome.state == "success", outcome
    assert outcome.result["id"] == task_id
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % task_id
    assert created(sim, P("op-deferred")) == [task_id]


async def test_a_failed_video_fails_without_retry(sim, sidecar):
    c = ctx("op-fails")
    op = generate(sidecar.target, P("op-fails"), deferrable=True, retries=3)
    deferral = engine.run_task(op, c).deferred
    task_id = deferral.trigger.video_task_id
    sim.set_task(task_id, HOLD_PROCESSING)  # nothing polls it while no one watches
    running = asyncio.ensure_future(resumed(deferral))
    try:
        await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_active_watches", 1),
                                 10, "the trigger's watch")
        await sim.fail(task_id, "content policy")
        next_method, next_kwargs = await running
    finally:
        await harness.cancel(running)
    outcome = engine.run_task(op, c, next_method=next_method, next_kwargs=next_kwargs,
                              try_number=1)
    assert outcome.state == "failed" and type(outcome.error) is AirflowFailException, outcome
    assert "content policy" in str(outcome.error)


def test_deferral_timeout_is_a_timeout_naming_the_request(sim, sidecar):
    c = ctx("op-deferral-timeout")
    op = generate(sidecar.target, P("op-deferral-timeout"), deferrable=True, timeout=7200,
                  retries=3)
    next_method, next_kwargs = engine.deferral_timed_out()
    outcome = engine.run_task(op, c, next_method=next_method, next_kwargs=next_kwargs)
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowSensorTimeout), outcome
    assert request_id_for(c) in str(outcome.error) and "within 2h" in str(outcome.error)


# Exactly once per task instance.

async def test_a_retry_creates_once(sim, sidecar):
    """The first try's worker dies after the create (its deferral is lost);
    the retry, same context but try_number 2, gets the same task."""
    first = ctx("op-retry")
    op = generate(sidecar.target, P("op-retry"), deferrable=True, retries=3)
    deferral = engine.run_task(op, first).deferred
    [task_id] = created(sim, P("op-retry"))
    retry = engine.retry_of(first)
    assert retry["ti"].try_number == 2
    op2 = generate(sidecar.target, P("op-retry"), deferrable=True, retries=3)
    deferral2 = engine.run_task(op2, retry, try_number=2).deferred
    assert deferral2.trigger.video_task_id == task_id == deferral.trigger.video_task_id
    next_method, next_kwargs = await resumed(deferral2)
    outcome = engine.run_task(op2, retry, next_method=next_method, next_kwargs=next_kwargs)
    assert outcome.state == "success" and outcome.result["id"] == task_id, outcome
    # A third try after success (a clear within the key's TTL) again: no create.
    third = engine.run_task(generate(sidecar.target, P("op-retry"), deferrable=False,
                                     timeout=30), engine.retry_of(retry))
    assert third.state == "success" and third.result["id"] == task_id, third
    assert created(sim, P("op-retry")) == [task_id]
    assert len(sim.creates(P("op-retry"))) == 1


def test_mapped_instances_and_runs_create_their_own(sim, sidecar):
    ids = set()
    for kwargs in [dict(map_index=0), dict(map_index=1), dict(run_id="scheduled__%s" % P("x"))]:
        c = ctx("op-mapped", **kwargs)
        outcome = engine.run_task(generate(sidecar.target, P("op-mapped"), deferrable=False,
                                           timeout=30), c)
        assert outcome.state == "success", outcome
        ids.add(outcome.result["id"])
    assert len(ids) == 3 and sorted(ids) == sorted(created(sim, P("op-mapped")))


def test_request_id_for():
    c = engine.context(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=1)
    key = request_id_for(c)
    assert key.startswith("airflow-v1-") and len(key) == 75 and key.isprintable()
    assert request_id_for(engine.retry_of(c)) == key  # every try
    assert request_id_for(engine.context(dag_id="d", task_id="t", run_id="r",
                                         map_index=None)) == key  # Airflow 3: None = not mapped
    others = {request_id_for(engine.context(**kw)) for kw in [
        dict(dag_id="d2", task_id="t", run_id="r"), dict(dag_id="d", task_id="t2", run_id="r"),
        dict(dag_id="d", task_id="t", run_id="r2"), dict(dag_id="d", task_id="t", run_id="r",
                                                         map_index=0),
        # No ambiguity where one id ends and the next begins.
        dict(dag_id="d", task_id="t,r", run_id=""), dict(dag_id="d\",\"t", task_id="", run_id="r"),
    ]}
    assert len(others) == 6 and key not in others
    long = engine.context(dag_id="d" * 250, task_id="t" * 250, run_id="r" * 250, map_index=9999)
    assert len(request_id_for(long)) == 75


def test_an_explicit_request_id_is_templated(sim, sidecar):
    # Two tasks given one key ask for one video.
    results = []
    for task_id in ("a", "b"):
        c = ctx("op-explicit", task_id=task_id)
        op = generate(sidecar.target, P("op-explicit"), task_id=task_id, deferrable=False,
                      timeout=30, request_id="shared-{{ run_id }}")
        outcome = engine.run_task(op, c)
        assert outcome.state == "success", outcome
        assert op.request_id == "shared-manual__%s" % P("op-explicit")
        results.append(outcome.result["id"])
    assert results[0] == results[1] and created(sim, P("op-explicit")) == [results[0]]


def test_a_body_that_renders_differently_in_a_retry_conflicts(sim, sidecar):
    body = {"model": "videos", "prompt": P("op-conflict"), "duration": "{{ params.d }}"}
    first = ctx("op-conflict", params={"d": 5})
    outcome = engine.run_task(generate(sidecar.target, None, body=dict(body), deferrable=False,
                                       timeout=30), first)
    assert outcome.state == "success", outcome
    retry = engine.retry_of(first)
    retry["params"]["d"] = 10
    outcome = engine.run_task(generate(sidecar.target, None, body=dict(body), deferrable=False,
                                       retries=3), retry, try_number=2)
    assert outcome.state == "failed" and isinstance(outcome.error, VideoCreateRefused), outcome
    assert outcome.error.code == "ALREADY_EXISTS"
    assert "another family or body" in str(outcome.error)
    assert len(sim.creates(P("op-conflict"))) == 1


# Refused and unknown outcomes.

@pytest.mark.parametrize("how", ["no-prompt", "vendor-400", "vendor-code"])
def test_a_refusal_fails_without_retry(sim, sidecar, how):
    prompt = P("op-refused-" + how)
    body = {"model": "kyyvideo2_fast", "prompt": prompt}
    if how == "no-prompt":
        body = {"model": "kyyvideo2_fast", "text": prompt}
        words = "prompt"
    elif how == "vendor-400":
        sim.create_fault({"family": "kyyvideo2", "kind": "refuse", "count": 1,
                          "message": "duration must be 5 or 10"})
        words = "duration must be 5 or 10"
    else:  # the {"code": "400"} shape of family videos
        sim.create_fault({"family": "videos", "kind": "refuse", "http_status": 200, "count": 1,
                          "message": "prompt rejected by moderation"})
        words = "prompt rejected by moderation"
    family = "videos" if how == "vendor-code" else "kyyvideo2"
    outcome = engine.run_task(generate(sidecar.target, None, family=family, body=body,
                                       retries=3), ctx("op-refused-" + how))
    assert outcome.state == "failed" and isinstance(outcome.error, VideoCreateRefused), outcome
    assert isinstance(outcome.error, AirflowFailException)
    assert outcome.error.code == "INVALID_ARGUMENT" and words in str(outcome.error)
    assert "nothing was created" in str(outcome.error)
    assert harness.API_KEY not in str(outcome.error)


def test_an_unknown_outcome_fails_without_retry_and_never_creates_again(sim, sidecar):
    sim.create_fault({"family": "veo", "kind": "accepted_then_dropped", "count": 1})
    c = ctx("op-unknown")
    op = generate(sidecar.target, P("op-unknown"), family="veo", retries=3)
    outcome = engine.run_task(op, c)
    assert outcome.state == "failed", outcome
    assert isinstance(outcome.error, VideoCreateOutcomeUnknown)
    assert isinstance(outcome.error, AirflowFailException) and outcome.error.code == "ABORTED"
    message = str(outcome.error)
    assert "may have created" in message and request_id_for(c) in message
    assert "another request_id" in message
    # Cleared by hand and run again: the same key, the same answer, no request.
    again = engine.run_task(generate(sidecar.target, P("op-unknown"), family="veo"),
                            engine.retry_of(c))
    assert again.state == "failed" and isinstance(again.error, VideoCreateOutcomeUnknown)
    assert [x["answer"] for x in sim.creates(P("op-unknown"))] == ["dropped"]
    # A new request_id accepts the possible duplicate.
    dup = engine.run_task(generate(sidecar.target, P("op-unknown"), family="veo",
                                   request_id="accept-a-duplicate-%s" % P("x"),
                                   deferrable=False, timeout=30), c)
    assert dup.state == "success", dup
    assert len(created(sim, P("op-unknown"))) == 2


# Retried: nothing was created.

def test_an_unreachable_sidecar_is_retried():
    target = "127.0.0.1:%d" % harness.closed_port()
    outcome = engine.run_task(generate(target, "x", create_timeout=0.3, retries=1),
                              ctx("op-unreachable"))
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException
    assert "unreachable" in str(outcome.error) and "UNAVAILABLE" in str(outcome.error)


def test_a_busy_vendor_is_retried_and_the_retry_creates_once(sim, sidecar):
    sim.create_fault({"family": "grok", "kind": "server_error", "http_status": 503,
                      "count": -1})
    c = ctx("op-busy")
    op = generate(sidecar.target, P("op-busy"), family="grok", create_timeout=1, retries=1)
    outcome = engine.run_task(op, c)
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException and "UNAVAILABLE" in str(outcome.error)
    attempts = sim.creates(P("op-busy"))
    assert attempts and all(x["answer"] == "503" and not x["id"] for x in attempts)
    sim.clear_faults()
    retry = engine.run_task(generate(sidecar.target, P("op-busy"), family="grok",
                                     deferrable=False, timeout=30), engine.retry_of(c),
                            try_number=2)
    assert retry.state == "success", retry
    assert len(created(sim, P("op-busy"))) == 1


def test_the_spend_guard_is_retried_and_nothing_is_sent(sim, start_sidecar):
    """RESOURCE_EXHAUSTED: the sidecar's --max_creates_per_hour. Nothing was
    sent and the key was released, so Airflow's retries (retry_delay apart)
    may find room later in the sliding hour, with the same request_id."""
    guarded = start_sidecar(extra_args=["--max_creates_per_hour=1"])
    ok = engine.run_task(generate(guarded.target, P("op-guard-1"), deferrable=False, timeout=30),
                         ctx("op-guard-1"))
    assert ok.state == "success", ok
    outcome = engine.run_task(generate(guarded.target, P("op-guard-2"), retries=2),
                              ctx("op-guard-2"))
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException and "spend guard" in str(outcome.error)
    assert sim.creates(P("op-guard-2")) == []


# The body: templates and numbers.

def test_integers_reach_the_vendor_as_integers(sim, sidecar):
    """A number in the body is sent as an integer when integral (10 and 10.0
    alike: a Struct number is a double, the sidecar writes integral ones as
    integers). A template in a dict renders to a string: "{{ params.d }}" is
    sent as "10", unless the DAG renders native objects; a str body is JSON
    after rendering, so its {{ params.d }} is a number."""

    def sent(name, body, native=False):
        outcome = engine.run_task(generate(sidecar.target, None, body=body, deferrable=False,
                                           timeout=30), ctx(name, params={"d": 10}, native=native))
        assert outcome.state == "success", outcome
        [c] = sim.creates(P(name))
        return c["body"], json.loads(c["body"])

    raw, body = sent("op-int-dict", {"model": "videos", "prompt": P("op-int-dict"),
                                     "duration": 10, "seconds": 10.0, "scale": 1.5,
                                     "templated": "{{ params.d }}",
                                     "nested": [{"n": 3, "t": "{{ params.d }}"}]})
    assert '"duration":10,' in raw.replace(" ", "") or '"duration":10}' in raw.replace(" ", "")
    assert "10.0" not in raw
    assert body["duration"] == 10 and type(body["duration"]) is int
    assert body["seconds"] == 10 and type(body["seconds"]) is int
    assert body["scale"] == 1.5
    assert body["templated"] == "10"  # a string, as rendered
    assert body["nested"] == [{"n": 3, "t": "10"}]

    _, body = sent("op-int-json", '{"model": "videos", "prompt": "%s", '
                                  '"duration": {{ params.d }}}' % P("op-int-json"))
    assert body["duration"] == 10 and type(body["duration"]) is int

    _, body = sent("op-int-native", {"model": "videos", "prompt": P("op-int-native"),
                                     "duration": "{{ params.d }}"}, native=True)
    assert body["duration"] == 10 and type(body["duration"]) is int


@pytest.mark.parametrize("body,words", [
    ("{not json", "not JSON"),
    ('["a list"]', "must be a dict"),
    ({"model": "videos", "prompt": "x", "when": object()}, "is not JSON"),
    ({"model": "videos", "prompt": "x", "seed": 2 ** 60}, "beyond 2**53"),
])
def test_a_bad_body_fails_before_anything_is_sent(sim, sidecar, body, words):
    before = len(sim.creates())
    outcome = engine.run_task(generate(sidecar.target, None, body=body, retries=3),
                              ctx("op-bad-body"))
    assert outcome.state == "failed" and isinstance(outcome.error, VideoCreateRefused), outcome
    assert words in str(outcome.error)
    assert len(sim.creates()) == before


def test_arguments(major, monkeypatch):
    assert set(VideoGenerateOperator.template_fields) == {"family", "body", "request_id",
                                                          "target", "create_target"}
    with pytest.raises(TypeError):
        VideoGenerateOperator(task_id="g", family="videos")  # body is required
    expected = AirflowException if major == 2 else TypeError
    with pytest.raises(expected, match="Invalid arguments"):
        VideoGenerateOperator(task_id="g", family="videos", body={}, not_an_argument=1)
    with pytest.raises(ValueError, match="timeout"):
        VideoGenerateOperator(task_id="g", family="videos", body={}, timeout=0)
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    assert VideoGenerateOperator(task_id="g", family="videos", body={}).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert VideoGenerateOperator(task_id="g", family="videos", body={}).deferrable is True
    assert VideoGenerateOperator(task_id="g", family="videos", body={},
                                 deferrable=False).deferrable is False


def test_target_from_the_environment(sim, sidecar, monkeypatch):
    monkeypatch.setenv("VIDEOTASK_TARGET", sidecar.target)
    outcome = engine.run_task(generate(None, P("op-env"), deferrable=False, timeout=30),
                              ctx("op-env"))
    assert outcome.state == "success" and outcome.result["id"] == created(sim, P("op-env"))[0]


def test_a_create_slower_than_create_timeout_is_retried_and_the_retry_gets_its_video(
        sim, sidecar):
    """The caller's deadline passes while the vendor is still answering: the
    sidecar waits for the answer anyway and remembers it, so the retry (same
    request_id) gets the video without a second create."""
    sim.create_fault({"family": "seedance", "kind": "slow", "delay_ms": 1500, "count": 1})
    c = ctx("op-slow")
    op = generate(sidecar.target, P("op-slow"), family="seedance", create_timeout=0.5,
                  retries=1)
    outcome = engine.run_task(op, c)
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException
    assert "no answer within create_timeout (500ms)" in str(outcome.error)
    retry = engine.run_task(generate(sidecar.target, P("op-slow"), family="seedance",
                                     deferrable=False, timeout=30), engine.retry_of(c),
                            try_number=2)
    assert retry.state == "success", retry
    assert created(sim, P("op-slow")) == [retry.result["id"]]
    assert len(sim.creates(P("op-slow"))) == 1


def test_create_target_creates_and_target_waits(sim, sidecar, start_sidecar):
    """A shared sidecar keeps every worker's keys (create_target); the wait
    uses the worker's own (target), here other sidecar processes."""
    local = start_sidecar(extra_args=["--poll_interval=50ms"])
    c = ctx("op-create-target")
    first = engine.run_task(generate(local.target, P("op-create-target"), deferrable=True,
                                     create_target=sidecar.target), c)
    assert first.state == "deferred", first
    assert first.deferred.trigger.serialize()[1]["target"] == local.target
    # The retry runs on another worker, whose own sidecar knows nothing; the
    # shared one has the key.
    other_local = start_sidecar()
    retry = engine.run_task(generate(other_local.target, P("op-create-target"), deferrable=False,
                                     timeout=30, create_target=sidecar.target),
                            engine.retry_of(c), try_number=2)
    assert retry.state == "success", retry
    assert created(sim, P("op-create-target")) == [retry.result["id"]]
    assert first.deferred.trigger.video_task_id == retry.result["id"]


def test_a_sidecar_killed_during_the_create_is_retried_and_has_forgotten_the_key(
        sim, start_sidecar):
    """The limit of keys in one sidecar's memory (docs/create.md): the sidecar
    dies while its vendor request is under way, the vendor creates the video
    anyway, and the task fails retryably ("Socket closed"). The restarted
    sidecar does not know the key, so the retry creates a second video. This
    test pins that behaviour down so that it is not forgotten (the README
    says so); keys in Redis are meant to end it."""
    doomed = start_sidecar(extra_args=["--poll_interval=50ms"])
    sim.create_fault({"family": "vidu", "kind": "slow", "delay_ms": 1500, "count": 1})
    c = ctx("op-killed")
    op = generate(doomed.target, P("op-killed"), family="vidu", create_timeout=10, retries=1)
    done = {}
    runner = threading.Thread(target=lambda: done.update(outcome=engine.run_task(op, c)))
    runner.start()
    deadline = engine.utcnow() + timedelta(seconds=10)
    while not sim.creates(P("op-killed")) and engine.utcnow() < deadline:
        time.sleep(0.02)  # until the vendor has the request
    doomed.proc.signal(signal.SIGKILL)
    runner.join(20)
    outcome = done["outcome"]
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException and "UNAVAILABLE" in str(outcome.error)
    deadline = engine.utcnow() + timedelta(seconds=10)
    while not created(sim, P("op-killed")) and engine.utcnow() < deadline:
        time.sleep(0.02)  # the slow answer still creates it
    assert len(created(sim, P("op-killed"))) == 1
    restarted = start_sidecar(extra_args=["--poll_interval=50ms"])
    retry = engine.run_task(generate(restarted.target, P("op-killed"), family="vidu",
                                     deferrable=False, timeout=30), engine.retry_of(c),
                            try_number=2)
    assert retry.state == "success", retry
    assert len(created(sim, P("op-killed"))) == 2  # the gap: a second video


def test_a_request_id_that_renders_to_no_string(sim, sidecar):
    # Native rendering makes "{{ params.n }}" an int: refused, nothing sent.
    before = len(sim.creates())
    outcome = engine.run_task(generate(sidecar.target, P("op-key-int"), request_id="{{ params.n }}",
                                       retries=3), ctx("op-key-int", params={"n": 7}, native=True))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    assert "request_id must render to a string, not int" in str(outcome.error)
    assert len(sim.creates()) == before
    # A template that renders empty stays the template's text (Airflow sets a
    # rendered field only when it is truthy): refused, or every instance
    # rendering empty would share one key.
    outcome = engine.run_task(generate(sidecar.target, P("op-key-empty"),
                                       request_id="{{ params.k }}", retries=3),
                              ctx("op-key-empty", params={"k": ""}))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    assert "was not rendered" in str(outcome.error)
    assert sim.creates(P("op-key-empty")) == []
