"""What Airflow does around an operator, for the sensor tests: a STAND-IN
(tests only) for the engine functions named below, on the stand-in's
classes. Each follows the major airflow._stub is set to.

- run_task(): the task runner, which calls execute() or, when the task comes
  back from a deferral, resume_execution(next_method, next_kwargs, context),
  and turns the outcome into a state. Airflow 2.10:
  TaskInstance._execute_task and _run_raw_task (airflow/models/taskinstance.py);
  Airflow 3: _execute_task and run (task-sdk/src/airflow/sdk/execution_time/
  task_runner.py). Both: TaskDeferred -> deferred, AirflowSkipException ->
  skipped, AirflowRescheduleException -> up_for_reschedule,
  AirflowFailException and AirflowSensorTimeout -> failed without retry, any
  other exception -> up_for_retry while retries are left, else failed.
  Before execute() and before resume_execution() the runner renders the
  operator's template_fields (2.10: _execute_task_with_callbacks calls
  render_templates; 3.x: _prepare calls ti.render_templates), with the
  stand-in's renderer (airflow_stub/airflow/template/templater.py).
- context(): the parts of the task's context the tests use: "ti" and
  "task_instance" (the task instance: dag_id, task_id, run_id, map_index,
  try_number, as Airflow 2's TaskInstance has them, airflow/models/
  taskinstance.py, and Airflow 3's RuntimeTaskInstance, task-sdk/src/
  airflow/sdk/execution_time/task_runner.py, from the execution API's
  TaskInstance in task-sdk/src/airflow/sdk/api/datamodels/_generated.py),
  "run_id", "params", "dag" (dag_id, render_template_as_native_obj) and
  "dag_run". A retry is the same context with try_number + 1.
- run_in_triggerer(): the triggerer rebuilds the trigger from serialize()
  (stored as JSON), runs it, and TriggerEvent.handle_submit resumes the task
  with next_kwargs["event"] = the first event's payload.
- deferral_timed_out(): the scheduler's check_trigger_timeouts resumes a
  deferred task whose timeout passed with next_method "__fail__" and
  next_kwargs {"error": "Trigger/execution timeout"} (2.x,
  airflow/jobs/scheduler_job_runner.py) or {"error":
  TriggerFailureReason.TRIGGER_TIMEOUT} (3.x).
- start_from_trigger(): Airflow 2.10's DagRun.schedule_tis defers a task whose
  operator has start_trigger_args and start_from_trigger, without a worker,
  and TaskInstance._defer_task builds the trigger from trigger_cls and
  trigger_kwargs as they are (no templates rendered). Airflow 3's scheduler
  has this disabled (airflow-core/src/airflow/models/dagrun.py), so the task
  goes to a worker: None.
"""

import datetime
import importlib
import json
from dataclasses import dataclass
from typing import Any

from airflow import _stub
from airflow.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from airflow.models.trigger import TRIGGER_FAIL_REPR, TriggerFailureReason


@dataclass
class Outcome:
    state: str  # success, deferred, skipped, up_for_reschedule, up_for_retry, failed
    result: Any = None  # the return value (XCom) on success
    error: BaseException = None
    deferred: TaskDeferred = None


class FakeTaskInstance:
    """The task instance a context carries: its identity (Airflow 2's
    task_instance table has the primary key dag_id, task_id, run_id,
    map_index, default -1 for a task that is not mapped; try_number counts
    the tries of that one row), and, in reschedule mode, the first
    reschedule of this try, from which the sensor's timeout counts (3.x:
    ti.get_first_reschedule_date; 2.x reads the same from TaskReschedule)."""

    def __init__(self, first_reschedule_date=None, dag_id="videos_dag", task_id="generate",
                 run_id="manual__2026-01-01T00:00:00+00:00", map_index=-1, try_number=1):
        self.first_reschedule_date = first_reschedule_date
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = try_number

    def get_first_reschedule_date(self, context):
        return self.first_reschedule_date


class FakeDag:
    def __init__(self, dag_id, render_template_as_native_obj=False):
        self.dag_id = dag_id
        self.render_template_as_native_obj = render_template_as_native_obj


class FakeDagRun:
    def __init__(self, dag_id, run_id):
        self.dag_id = dag_id
        self.run_id = run_id


def context(first_reschedule_date=None, params=None, native=False, **identity):
    """A task's context; `identity` sets the task instance's dag_id, task_id,
    run_id, map_index, try_number."""
    ti = FakeTaskInstance(first_reschedule_date, **identity)
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": ti.run_id,
        "params": dict(params or {}),
        "dag": FakeDag(ti.dag_id, render_template_as_native_obj=native),
        "dag_run": FakeDagRun(ti.dag_id, ti.run_id),
    }


def retry_of(ctx):
    """The context of the next try of the same task instance."""
    ti = ctx["ti"]
    out = context(ti.first_reschedule_date, params=ctx["params"],
                  native=ctx["dag"].render_template_as_native_obj, dag_id=ti.dag_id,
                  task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index,
                  try_number=ti.try_number + 1)
    return out


def run_task(operator, ctx=None, next_method=None, next_kwargs=None, try_number=1):
    """Runs execute() (or resume_execution() when next_method is given) and
    returns the task's state as the task runner sets it."""
    ctx = context() if ctx is None else ctx
    try:
        operator.render_template_fields(ctx)
        if next_method:
            result = operator.resume_execution(next_method=next_method, next_kwargs=next_kwargs,
                                               context=ctx)
        else:
            result = operator.execute(ctx)
    except TaskDeferred as e:
        return Outcome("deferred", deferred=e)
    except AirflowSkipException as e:
        return Outcome("skipped", error=e)
    except AirflowRescheduleException as e:
        return Outcome("up_for_reschedule", error=e)
    except (AirflowFailException, AirflowSensorTimeout) as e:
        return Outcome("failed", error=e)
    except Exception as e:  # AirflowException, TaskDeferralError, anything else
        retries_left = try_number <= getattr(operator, "retries", 0)
        return Outcome("up_for_retry" if retries_left else "failed", error=e)
    return Outcome("success", result=result)


async def run_in_triggerer(deferred):
    """(next_method, next_kwargs) once the deferral's trigger fired."""
    classpath, kwargs = deferred.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    async for event in trigger.run():
        next_kwargs = dict(deferred.kwargs or {})
        next_kwargs["event"] = event.payload
        return deferred.method_name, next_kwargs
    raise AssertionError("the trigger yielded nothing")


def deferral_timed_out():
    """(next_method, next_kwargs) of a deferral the scheduler timed out."""
    if _stub.major() == 2:
        return TRIGGER_FAIL_REPR, {"error": "Trigger/execution timeout"}
    return TRIGGER_FAIL_REPR, {"error": TriggerFailureReason.TRIGGER_TIMEOUT}


def start_from_trigger(operator):
    """The deferral the scheduler makes for a task that starts from the
    triggerer, or None when the task goes to a worker instead."""
    args = operator.start_trigger_args
    if _stub.major() != 2 or args is None or not operator.start_from_trigger:
        return None
    module, _, name = args.trigger_cls.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**(args.trigger_kwargs or {}))
    return TaskDeferred(trigger=trigger, method_name=args.next_method, kwargs=args.next_kwargs,
                        timeout=args.timeout)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
