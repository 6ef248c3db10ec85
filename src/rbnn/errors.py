"""User-facing errors: one line naming the culprit and what was expected; the CLI prints it and exits 2."""


class RbnnError(Exception):
    """An error caused by user input (a file, a config key, a checkpoint), not by a bug."""


class ConfigError(RbnnError):
    pass


class DataError(RbnnError):
    pass


class CheckpointError(RbnnError):
    pass
