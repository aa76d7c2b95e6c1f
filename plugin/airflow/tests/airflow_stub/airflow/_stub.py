"""The stand-in's switch between the two Airflow majors it mirrors (tests only).

Where Airflow 2.x and 3.x behave differently at a point videotask_airflow
depends on, the stand-in asks major(): unknown operator arguments
(AirflowException / TypeError), BaseOperator.resume_execution's "__fail__"
path (TaskDeferralError / TaskDeferralTimeout), BaseSensorOperator's
resume_execution, never_fail, the error the scheduler resumes a timed-out
deferral with, and whether the scheduler starts a task from the triggerer
(start_from_trigger).
"""

_major = 3


def major():
    return _major


def use_major(value):
    """Makes the stand-in behave like Airflow `value` (2 or 3) from now on."""
    global _major
    if value not in (2, 3):
        raise ValueError("the stand-in mirrors Airflow 2 or 3, not %r" % (value,))
    _major = value
