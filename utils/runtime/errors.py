"""Errors that the user can fix. The entry points print them as one line, with
no traceback, and exit with status 2."""
import errno
import functools
import sys
from typing import Callable, Optional, Sequence

# Failures of the machine, not of the code, that the user can fix: said in one line.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only"}


def disk_trouble(error: OSError) -> Optional[str]:
    """What the user can fix about a failed write, in words; None for any other OSError."""
    if error.errno not in DISK_ERRORS:
        return None
    return f"{DISK_ERRORS[error.errno]} (writing {error.filename})"


def examples(items: Sequence[str], shown: int) -> str:
    """The first `shown` items, and how many more: for messages that would otherwise list thousands."""
    text = ", ".join(items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


class UserError(Exception):
    """A mistake in the input or options, with a message that says what to do."""


class ConfigError(UserError):
    """A bad option or configuration value."""


class DataError(UserError):
    """A dataset that cannot be trained on as it is."""


def continue_with(error: BaseException, command: str) -> None:
    """Attach the command that continues the interrupted work, for reports_user_errors to print."""
    error.continue_with = command


def reports_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """For entry points: a UserError (or a full disk) becomes one line on stderr and
    exit status 2, Ctrl-C a short note and status 130; never a traceback. A full disk
    or Ctrl-C that carries a `continue_with` command (a run) says that finished work
    is saved and how to go on."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        # A file name that is not valid UTF-8 is printed with its odd bytes escaped, never a crash.
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            trouble = disk_trouble(error)
            if trouble is None:
                raise
            command = getattr(error, "continue_with", None)
            advice = f"finished folds and epochs are saved. Make room, then continue with:\n{command}" if command \
                else "make room and try again"
            print(f"error: {trouble}; {advice}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as error:
            command = getattr(error, "continue_with", None)
            print(f"interrupted; finished folds and epochs are saved. Continue with:\n{command}" if command
                  else "interrupted", file=sys.stderr)
            return 130

    return wrapper
