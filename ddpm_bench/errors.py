"""Typed user-facing errors. The CLI turns a `UserError` into one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad usage or bad input: a file, flag or value the user can fix. Exit status 2."""


class DataError(UserError):
    """A data source that is missing, unreadable or not in the expected format."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, foreign or contradicts the flags."""


class ModelOutputError(UserError):
    """A model that returned the wrong shape or non-finite values."""


class ConfigError(UserError):
    """A recipe or configuration with unknown keys or invalid values."""


class OutputDirError(UserError):
    """An output directory that exists with other content or other settings."""
