"""Writing files so that a reader never sees half of one: every output is written
to a partial file beside it, then renamed into place."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from utils.runtime.distributed import is_main
from utils.runtime.errors import UserError


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        stat = os.stat(path)  # through symbolic links
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def refuse_overwriting_inputs(outputs: Iterable[tuple[str, Path]], inputs: Iterable[Path]) -> None:
    """One line, before anything is written, when an output (flag, path) would replace one of
    the `inputs`: a user's photo or model is never overwritten by what this tool writes. Files
    are compared as the file system sees them (device and inode), so a path through a symbolic
    link or a hard link is the file it leads to. An output that does not exist yet replaces nothing."""
    known = {identity: Path(path) for path in inputs if (identity := _identity(path)) is not None}
    for flag, output in outputs:
        replaced = known.get(_identity(output))
        if replaced is not None:
            raise UserError(f"{flag} would overwrite {replaced}, one of the files it reads; choose another {flag}")


# The host in a partial file's name: folds of one run may train on several machines that share
# the output folder, and a process is known to be gone only on its own machine.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_PARTIAL = re.compile(r"\.(?:(?P<host>[A-Za-z0-9-]+)-)?(?P<pid>\d+)\.tmp$")


def partial_path(path: Path) -> Path:
    """Where to write `path` before renaming it into place with os.replace. Unique per
    process: two processes writing the same file (two runs training one cached teacher
    at once) never write into each other's partial file."""
    return path.with_name(f"{path.name}.{_HOST}-{os.getpid()}.tmp")


def remove_stale_partials(folder: Path) -> int:
    """Remove the partial files under `folder` that a process of this machine left when it was
    killed (its process is gone); returns how many. Those of live processes, and of other
    machines, stay."""
    removed = 0
    for path in Path(folder).rglob("*.tmp"):
        match = _PARTIAL.search(path.name)
        if match and match["host"] in (None, _HOST) and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(partial)` writes the content to the partial file, which then replaces `path`:
    a process killed while writing leaves the previous file (or none), never half of one.
    In a data-parallel job only rank 0 writes: the ranks compute the same outputs."""
    if not is_main():
        return
    path = Path(path)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as error:
        # A write cut short by a full disk reaches here without a file name (paddle.save, np.save),
        # and the message is to name the file; made anew so that it survives a fold worker's pickling.
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        partial.unlink(missing_ok=True)


# File names that are not valid UTF-8 reach Python as surrogate escapes (os.fsdecode); text files
# keep them as the bytes the OS gave, so that a path written is the path read back.
TEXT_ERRORS = "surrogateescape"


def write_text_atomic(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8", errors=TEXT_ERRORS))


def write_json_atomic(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")


# Spreadsheets run a cell that starts with one of these as a formula (CSV injection, OWASP): such
# text cells get a leading apostrophe, as OWASP recommends; so do cells that start with one, so
# that read_csv_rows gives back exactly what was written.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def spreadsheet_safe(cell: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text that starts like a formula gets a leading
    apostrophe; numbers (and text that is a number, such as -0.5) stay as they are."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS) and not _is_number(cell):
        return "'" + cell
    return cell


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file whose text cells are spreadsheet_safe."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    write_atomically(path, lambda partial: partial.write_text(text.getvalue(), encoding="utf-8", errors=TEXT_ERRORS,
                                                                     newline=""))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by write_csv_atomic, by column name, with the apostrophes
    that spreadsheet_safe added taken off again."""
    with open(path, newline="", encoding="utf-8", errors=TEXT_ERRORS) as handle:
        return [{key: value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS) else value
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    """An .npy file (np.save given a path would append .npy to the partial file's name)."""
    def write(partial: Path) -> None:
        with open(partial, "wb") as handle:
            np.save(handle, array)

    write_atomically(path, write)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False,
                   advice: str = "wait for it to finish, or choose another --run_name",
                   shared: bool = False) -> Iterator[None]:
    """Held by this process alone for the block (an flock, released even if the process is
    killed); another process that asks gets a one-line error naming the holder, or with
    `wait` waits for it. `shared`: held beside other shared holders, but never beside an
    exclusive one. In a data-parallel job rank 0 holds it for all ranks."""
    if not is_main():
        yield
        return
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{what} is in use by {holder}; {advice}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


SCRATCH_PREFIX = "paddle-kd-scratch-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_dir(parent: Optional[Path] = None) -> Iterator[Path]:
    """A folder for this process's temporary files (in the system's temporary directory by
    default), removed at the end of the block; folders that killed processes left behind
    are removed when the next one is made."""
    parent = Path(parent or tempfile.gettempdir())
    for stale in parent.glob(f"{SCRATCH_PREFIX}*"):
        pid = stale.name[len(SCRATCH_PREFIX):]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = parent / f"{SCRATCH_PREFIX}{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
