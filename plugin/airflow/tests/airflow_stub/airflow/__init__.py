"""A STAND-IN for Airflow, used only by videotask_airflow's tests (see ../README.md)."""
