"""Building the project's C++ CPU operators (kernels/csrc/) with `paddle.utils.cpp_extension`:
compiled on first use for this machine, cached under the user's cache directory by the
source's content, compiler flags, Paddle version and CPU, and shared by every checkout.
Where no compiler is available or the build fails, callers keep Paddle's own kernels."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import platform
from pathlib import Path
from types import ModuleType
from typing import Optional

import paddle

from utils.runtime.layout import user_cache_dir

CSRC = Path(__file__).resolve().parent / "csrc"
# -march=native: the build is cached per machine (the CPU's flags are in the cache key).
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp-simd"]
BUILT_MARKER = "built"  # written once a build in its directory has loaded


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def link_flags(libraries: tuple[str, ...]) -> list[str]:
    """Linker flags for libraries shipped in Paddle's wheel (paddle/libs), such as oneDNN."""
    if not libraries:
        return []
    directory = Path(paddle.__file__).resolve().parent / "libs"
    return [f"-L{directory}", *(f"-l:{name}" for name in libraries), f"-Wl,-rpath,{directory}"]


def build_directory(source: Path, libraries: tuple[str, ...] = ()) -> Path:
    """Where `source` is built: one directory per source content, compiler and linker flags,
    Paddle version and CPU, under the user's cache directory."""
    key = hashlib.sha256("\n".join([
        source.read_text(encoding="utf-8"), " ".join(COMPILE_FLAGS + link_flags(libraries)), paddle.__version__,
        platform.machine(),
        platform.python_version(), _cpu_flags(),
    ]).encode()).hexdigest()[:16]
    return user_cache_dir() / f"{source.stem}-{key}"


def build_operators(source: Path, directory: Path, libraries: tuple[str, ...] = ()) -> ModuleType:
    """Compile (or reuse) `source` in `directory`, linked with Paddle's shipped `libraries`,
    and return the module of its operators. Raises on any failure. A lock file keeps two
    processes (two runs, or fold workers) from building at once."""
    from paddle.utils.cpp_extension import load

    directory.mkdir(parents=True, exist_ok=True)
    # Paddle's builder prints progress and logs INFO lines; only failure matters here.
    quiet = io.StringIO()
    with open(directory / "build.lock", "w") as lock, contextlib.redirect_stdout(quiet):
        fcntl.flock(lock, fcntl.LOCK_EX)
        level = logging.root.manager.disable
        logging.disable(logging.INFO)
        # Paddle's builder signs a build with its sources' paths: building from a copy inside the
        # (content-keyed) directory lets every checkout of the project share one build.
        local_source = directory / source.name
        if not local_source.is_file() or local_source.read_bytes() != source.read_bytes():
            local_source.write_bytes(source.read_bytes())
        try:
            module = _load_built(directory / BUILT_MARKER, directory / source.stem)
            if module is None:
                module = load(name=source.stem, sources=[str(local_source)], extra_cxx_cflags=COMPILE_FLAGS,
                              extra_ldflags=link_flags(libraries), build_directory=str(directory))
                (directory / BUILT_MARKER).touch()
            return module
        finally:
            logging.disable(level)


def _load_built(marker: Path, library_directory: Path) -> Optional[ModuleType]:
    """The module of a finished build, loaded directly; None where there is none, or where it
    fails to load (Paddle's `load` then tries). `load` runs its builder in a new Python
    process even when nothing changed, about 1 s per operator library in every process (every
    fold worker, every run); the directory is keyed by content, flags, Paddle and CPU, so a
    build once finished there stays valid."""
    if not marker.is_file():
        return None
    from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

    try:
        return _import_module_from_library(library_directory.name, str(library_directory))
    except Exception:  # a damaged cache
        return None


@functools.cache
def compiled(source_name: str, what: str, skip_hint: str, libraries: tuple[str, ...] = ()) -> Optional[ModuleType]:
    """The operators of csrc/`source_name` (linked with Paddle's shipped `libraries`), or None
    (after a one-line note naming `what` and how to skip the attempt) where they cannot be built."""
    source = CSRC / source_name
    directory = build_directory(source, libraries)
    if not (directory / BUILT_MARKER).is_file():
        print(f"compiling {what} for this machine (once per machine: about 20 s on an idle CPU, up to a minute on a "
              "busy one)", flush=True)
    try:
        return build_operators(source, directory, libraries)
    except Exception as error:  # a missing compiler, a failed build or load: Paddle's kernels still work
        reason = str(error).strip().splitlines()[-1:] or [type(error).__name__]
        print(f"note: {what} could not be built ({reason[0][:200]}); training with Paddle's own kernels "
              f"({skip_hint} skips the attempt)", flush=True)
        return None
