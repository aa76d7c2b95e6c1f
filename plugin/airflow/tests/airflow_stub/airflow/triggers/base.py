"""Stand-in for airflow.triggers.base (tests only)."""

import abc
import dataclasses
import datetime
import logging
from typing import Any, Optional


class BaseTrigger(abc.ABC):
    """Runs in the triggerer's event loop; serialize() must round-trip."""

    def __init__(self, **kwargs):
        self.task_instance = None
        self.trigger_id = None

    @property
    def log(self):
        return logging.getLogger("airflow.task.trigger." + type(self).__name__)

    @abc.abstractmethod
    def serialize(self):
        """(classpath, kwargs) to rebuild the trigger with."""

    @abc.abstractmethod
    async def run(self):
        """An async generator of TriggerEvents."""
        yield None

    async def cleanup(self):
        """Called when the trigger is removed from the triggerer."""

    def __repr__(self):
        classpath, kwargs = self.serialize()
        return "<%s %r>" % (classpath, kwargs)


class TriggerEvent:
    """What a trigger yields; `payload` reaches the deferred method as `event`."""

    def __init__(self, payload):
        self.payload = payload

    def __eq__(self, other):
        return isinstance(other, TriggerEvent) and other.payload == self.payload

    def __repr__(self):
        return "TriggerEvent<%r>" % (self.payload,)


@dataclasses.dataclass
class StartTriggerArgs:
    """Airflow 2.10+: what the scheduler builds the trigger of an operator
    that starts from the triggerer with (start_from_trigger)."""

    trigger_cls: str
    next_method: str
    trigger_kwargs: Optional[dict] = None
    next_kwargs: Optional[dict] = None
    timeout: Optional[datetime.timedelta] = None
