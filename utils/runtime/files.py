"""Writing files so that a reader never sees half of one: every output is written
to a partial file beside it, then renamed into place."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np


def partial_path(path: Path) -> Path:
    """Where to write `path` before renaming it into place with os.replace. Unique per
    process: two processes writing the same file (two runs training one cached teacher
    at once) never write into each other's partial file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(partial)` writes the content to the partial file, which then replaces `path`:
    a process killed while writing leaves the previous file (or none), never half of one."""
    path = Path(path)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomically(path, lambda partial: partial.write_text(text.getvalue(), encoding="utf-8", newline=""))


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    """An .npy file (np.save given a path would append .npy to the partial file's name)."""
    def write(partial: Path) -> None:
        with open(partial, "wb") as handle:
            np.save(handle, array)

    write_atomically(path, write)
