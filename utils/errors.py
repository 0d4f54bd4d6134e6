"""Errors that the user can fix. The entry points print them as one line, with
no traceback, and exit with status 2."""


class UserError(Exception):
    """A mistake in the input or options, with a message that says what to do."""


class ConfigError(UserError):
    """A bad option or configuration value."""


class DataError(UserError):
    """A dataset that cannot be trained on as it is."""
