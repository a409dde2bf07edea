"""One small exception hierarchy; the CLI turns these into one clear line and a non-zero exit code."""


class VitalStreamError(Exception):
    """An expected failure with a message the user can act on."""

    exit_code = 1


class ConfigError(VitalStreamError):
    exit_code = 2


class BrokerUnavailable(VitalStreamError):
    exit_code = 3


class LakeNotWritable(VitalStreamError):
    exit_code = 4


class ModelError(VitalStreamError):
    exit_code = 5
