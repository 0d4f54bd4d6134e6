"""Errors that the user can fix. The entry points print them as one line, with
no traceback, and exit with status 2."""
import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the input or options, with a message that says what to do."""


class ConfigError(UserError):
    """A bad option or configuration value."""


class DataError(UserError):
    """A dataset that cannot be trained on as it is."""


def reports_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """For entry points: a UserError becomes one line on stderr and exit status 2,
    Ctrl-C a short note and status 130; never a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
