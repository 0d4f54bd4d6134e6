"""Reading and writing .pdparams files (weights, checkpoints, training states)
without running code from them.

paddle.save writes a pickle of plain containers and NumPy arrays, and
paddle.load unpickles whatever a file holds: a crafted file runs code when it
is loaded. This module unpickles with an allow-list: dicts, lists, tuples,
OrderedDicts, numbers, strings, and NumPy arrays and scalars of numeric types;
anything else (a function to call, a class to build, an object array) is
refused before it is created. Arrays are bounded in size, so a file cannot make
the loader reserve more memory than MAX_ARRAY_BYTES for one array.
"""
from __future__ import annotations

import codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from utils.runtime.errors import UserError
from utils.runtime.files import write_atomically

MAX_ARRAY_BYTES = 2**32  # 4 GB: far above any weight tensor of these networks
# paddle.save adds this table of parameter names to a state dict; paddle.load drops it again.
_NAME_TABLE = "StructuredToParameterName@@"


class UnreadableWeights(UserError):
    """A file that is not a weights file this tool can read safely."""


class _NdarrayType:
    """Stands for numpy.ndarray in a pickle: only _reconstruct may use it, nobody may call it."""


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("arrays of Python objects are not allowed")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's _reconstruct(ndarray, shape, dtype), for ndarrays of a bounded size only."""
    if subtype is not _NdarrayType:
        raise pickle.UnpicklingError("only plain NumPy arrays are allowed")
    dtype = np.dtype(dtype)
    if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError("an array of objects or of more than 4 GB")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 text may stand for bytes")
    return codecs.encode(text, encoding)


def _scalar(dtype: np.dtype, data: bytes = b"") -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("only numeric NumPy scalars are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _latin1,  # how protocol-2 pickles spell bytes
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a weights file has no use for") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def _tensors_as_arrays(obj: Any) -> Any:
    """paddle.save writes a Tensor as the pair (name, array), which paddle.load turns back
    into a tensor; here it becomes the array, which set_state_dict and set_value take."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, dict):
        return type(obj)((key, _tensors_as_arrays(value)) for key, value in obj.items() if key != _NAME_TABLE)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_as_arrays(value) for value in obj)
    return obj


def load_weights_file(path: Path) -> Any:
    """The content of a .pdparams file (NumPy arrays in plain containers), or an
    UnreadableWeights error saying in one line why it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _tensors_as_arrays(_RestrictedUnpickler(handle).load())
    except OSError as error:
        raise UnreadableWeights(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # whatever a malformed stream makes the unpickler raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableWeights(f"{path} is not a weights file this tool can read ({reason[:160]})") from None


def save_weights_file(path: Path, content: Any) -> None:
    """paddle.save, written atomically."""
    write_atomically(Path(path), lambda partial: paddle.save(content, str(partial)))
