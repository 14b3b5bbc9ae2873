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


class PluginError(Exception):
    """An exception raised inside a user's `--model` plug-in (its factory or its forward), reported as the
    plug-in's error in one line. Exit status 1: the plug-in failed, not the input nor ddpm-bench."""


class OutOfMemory(MemoryError):
    """The device (or the host) ran out of memory during a computation; the message names the batch size to
    lower. The command line exits 1 with its own line (ddpm_bench.failures)."""
