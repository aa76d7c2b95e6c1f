"""A STAND-IN for Airflow, used only by videotask_airflow's tests (see ../README.md).

It mirrors Airflow 2.7-2.10 or Airflow 3.x, switched at run time with
airflow._stub.use_major(2 | 3).
"""
