"""videotask.client's create_video_task against the real sidecar and the
simulated vendor's create endpoints (tests/sim/sim_upstream.h)."""

import asyncio
import json

import grpc
import pytest

import harness
from videotask import client
from videotask.client import (
    VideoTaskError,
    await_video_task,
    body_to_struct,
    create_video_task,
    create_video_task_sync,
    new_request_id,
)

LIMIT = 30.0


def body(prompt, **fields):
    return dict({"model": "videos", "prompt": prompt, "ratio": "16:9"}, **fields)


async def test_create_then_watch(sim, sidecar):
    key = new_request_id()
    task = await create_video_task("videos", body("py-create", duration=10), request_id=key,
                                   target=sidecar.target)
    assert task.id.startswith("proj_sim_") and task.status == client.QUEUED
    done = await asyncio.wait_for(await_video_task(task.id, target=sidecar.target), LIMIT)
    assert done.status == client.COMPLETED
    [received] = sim.creates("py-create")
    assert received["id"] == task.id
    # Integers stay integers on the way to the vendor, a string stays a string.
    assert '"duration":10' in received["body"].replace(" ", "")
    assert json.loads(received["body"])["duration"] == 10


async def test_same_key_creates_once_and_other_body_conflicts(sim, sidecar):
    key = new_request_id()
    first = await create_video_task("sora", body("py-once"), request_id=key, target=sidecar.target)
    again = await create_video_task("sora", body("py-once"), request_id=key, target=sidecar.target)
    assert first.id == again.id and first.id.startswith("video_sim_")
    with pytest.raises(VideoTaskError) as e:
        await create_video_task("sora", body("py-once", duration=5), request_id=key,
                                target=sidecar.target)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert len(sim.creates("py-once")) == 1


def test_sync_create_and_the_vendor_refusal(sim, sidecar):
    task = create_video_task_sync("kyyvideo2", body("py-sync"), request_id=new_request_id(),
                                  target=sidecar.target)
    assert task.id.startswith("video_sim_")
    with pytest.raises(VideoTaskError) as e:
        create_video_task_sync("kyyvideo2", {"model": "x"}, request_id=new_request_id(),
                               target=sidecar.target)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in e.value.details


async def test_unknown_outcome_is_aborted_and_never_sent_twice(sim, sidecar):
    sim.create_fault({"family": "veo", "kind": "accepted_then_dropped", "count": 1})
    key = new_request_id()
    for _ in range(2):
        with pytest.raises(VideoTaskError) as e:
            await create_video_task("veo", body("py-unknown"), request_id=key,
                                    target=sidecar.target)
        assert e.value.code == grpc.StatusCode.ABORTED
        assert "may have created" in e.value.details
    assert [c["answer"] for c in sim.creates("py-unknown")] == ["dropped"]


async def test_unreachable_sidecar_is_unavailable_and_nothing_sent():
    target = "127.0.0.1:%d" % harness.closed_port()
    with pytest.raises(VideoTaskError) as e:
        await create_video_task("videos", body("py-x"), request_id="k", target=target,
                                timeout=0.3)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in e.value.details
    with pytest.raises(VideoTaskError) as e:
        create_video_task_sync("videos", body("py-x"), request_id="k", target=target, timeout=0.3)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in e.value.details


@pytest.mark.parametrize("bad,words", [
    ([1], "must be a dict"),
    ({1: "x"}, "key 1 is not a string"),
    ({"n": 2 ** 53 + 1}, "beyond 2**53"),
    ({"n": float("inf")}, "not a JSON number"),
    ({"when": object()}, "is not JSON"),
    ({"nested": [{"deep": {1, 2}}]}, "body['nested'][0]['deep']"),
])
def test_bodies_json_cannot_carry_are_refused_before_sending(bad, words):
    with pytest.raises(VideoTaskError) as e:
        body_to_struct(bad)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details


def test_body_to_struct_keeps_shapes():
    s = body_to_struct({"a": 10, "b": [1, {}, []], "c": {}, "d": None, "e": True, "f": "10",
                        "g": (1, 2), "h": 2 ** 53})
    assert client.json_format.MessageToDict(s) == {
        "a": 10.0, "b": [1.0, {}, []], "c": {}, "d": None, "e": True, "f": "10",
        "g": [1.0, 2.0], "h": float(2 ** 53)}


async def test_bad_request_id_family_and_body_never_reach_the_vendor(sim, sidecar):
    before = len(sim.creates())
    for family, key in [("Bad-Family", "k1"), ("videos", ""), ("videos", "x" * 129),
                        ("videos", "tab\there")]:
        with pytest.raises(VideoTaskError) as e:
            await create_video_task(family, body("py-bad"), request_id=key, target=sidecar.target)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, (family, key)
    with pytest.raises(VideoTaskError) as e:
        await create_video_task("videos", body("py-bad"), request_id=None, target=sidecar.target)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(sim.creates()) == before
