"""Errors that the user can fix. The entry points print them as one line, with
no traceback, and exit with status 2."""
import errno
import functools
import sys
from typing import Callable, Optional

# Failures of the machine, not of the code, that the user can fix: said in one line.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only"}


def disk_trouble(error: OSError) -> Optional[str]:
    """What the user can fix about a failed write, in words; None for any other OSError."""
    if error.errno not in DISK_ERRORS:
        return None
    return f"{DISK_ERRORS[error.errno]} (writing {error.filename})"


class UserError(Exception):
    """A mistake in the input or options, with a message that says what to do."""


class ConfigError(UserError):
    """A bad option or configuration value."""


class DataError(UserError):
    """A dataset that cannot be trained on as it is."""


def reports_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """For entry points: a UserError (or a full disk) becomes one line on stderr and
    exit status 2, Ctrl-C a short note and status 130; never a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            trouble = disk_trouble(error)
            if trouble is None:
                raise
            print(f"error: {trouble}; make room and try again", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
