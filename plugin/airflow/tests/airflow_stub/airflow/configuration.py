"""Stand-in for airflow.configuration (tests only): `conf.getboolean` as
AirflowConfigParser has it (airflow/configuration.py): the environment
variable AIRFLOW__{SECTION}__{KEY} wins over the default; "true"/"t"/"1" and
"false"/"f"/"0" are the booleans; anything else raises."""

import os


class AirflowConfigException(Exception):
    pass


class _Conf:
    _defaults = {("operators", "default_deferrable"): "False"}
    _missing = object()

    def get(self, section, key, fallback=_missing):
        env = "AIRFLOW__%s__%s" % (section.upper(), key.upper())
        if env in os.environ:
            return os.environ[env]
        value = self._defaults.get((section.lower(), key.lower()), self._missing)
        if value is not self._missing:
            return value
        if fallback is not self._missing:
            return fallback
        raise AirflowConfigException("section/key [%s/%s] not found in config" % (section, key))

    def getboolean(self, section, key, fallback=_missing):
        value = self.get(section, key, fallback=fallback)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("t", "true", "1"):
            return True
        if text in ("f", "false", "0"):
            return False
        raise AirflowConfigException(
            'Failed to convert value to bool. Please check "%s" key in "%s" section. '
            'Current value: "%s".' % (key, section, value))


conf = _Conf()
