"""Reading and writing .pdparams files (weights, checkpoints, training states), and
reading PyTorch's legacy .pth files, without running code from them.

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


# PyTorch's serialization before version 1.6 (still read by torch.load): four pickles in a row
# (a magic number, the protocol version, the machine's byte order and type sizes, then the object,
# whose tensors refer to storages by key), the list of storage keys, then each storage's element
# count (8 bytes, little-endian) and raw data. The object pickle may use only these globals.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL = 1001
_TORCH_STORAGES = {"FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
                   "HalfStorage": np.dtype("<f2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4")}


class _TorchStorage:
    """A storage the pickle refers to; its data follow the pickles."""

    def __init__(self, dtype: np.dtype, count: int) -> None:
        if not isinstance(count, int) or count < 0 or count * dtype.itemsize > MAX_ARRAY_BYTES:
            raise pickle.UnpicklingError("a storage of a bad or too large size")
        self.dtype, self.count, self.data = dtype, count, None


class _TorchTensor:
    """A tensor to cut from its storage once the storages are read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> None:
        if not isinstance(storage, _TorchStorage) or not all(isinstance(n, int) and n >= 0 for n in
                                                              (offset, *size, *stride)) or len(size) != len(stride):
            raise pickle.UnpicklingError("a tensor with a bad storage, offset, size or stride")
        last = offset + sum((n - 1) * step for n, step in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.count:
            raise pickle.UnpicklingError("a tensor reaching past the end of its storage")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data, itemsize = self.storage.data, self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [n * itemsize for n in self.stride])
        return np.array(view, order="C")  # a contiguous copy, no longer a view of the storage


def _storage_type(name: str) -> Any:
    return lambda: _TORCH_STORAGES[name]  # a marker: nothing calls it


_TORCH_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _TorchTensor,
    **{("torch", name): _storage_type(name) for name in _TORCH_STORAGES},
}


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.storages: dict[str, _TorchStorage] = {}
        self.markers = {value: key[1] for key, value in _TORCH_ALLOWED.items() if key[0] == "torch"}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _TORCH_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a weights file has no use for") from None

    def persistent_load(self, pid: Any) -> Any:
        """('storage', storage type, key, location, element count[, view]) -> the storage."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in self.markers
                and isinstance(pid[2], str)):
            raise pickle.UnpicklingError("a reference that is not a tensor storage")
        dtype = _TORCH_STORAGES[self.markers[pid[1]]]
        storage = self.storages.setdefault(pid[2], _TorchStorage(dtype, pid[4]))
        if storage.dtype != dtype or storage.count != pid[4]:
            raise pickle.UnpicklingError("one storage described twice, differently")
        return storage


def _arrays_in(obj: Any) -> Any:
    if isinstance(obj, _TorchTensor):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((key, _arrays_in(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays_in(value) for value in obj)
    return obj


def _read_torch_legacy(handle: Any) -> Any:
    plain = _RestrictedUnpickler(handle)
    if plain.load() != TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a PyTorch file of the format before version 1.6 (torch.save with "
                                     "_use_new_zipfile_serialization=False)")
    if _RestrictedUnpickler(handle).load() != TORCH_PROTOCOL:
        raise pickle.UnpicklingError("a PyTorch protocol version other than 1001")
    machine = _RestrictedUnpickler(handle).load()
    if not isinstance(machine, dict) or machine.get("little_endian") is not True:
        raise pickle.UnpicklingError("written on a big-endian machine")
    unpickler = _TorchUnpickler(handle)
    content = unpickler.load()
    keys = _RestrictedUnpickler(handle).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise pickle.UnpicklingError("its storage list does not match its tensors")
    for key in keys:
        storage = unpickler.storages[key]
        count = int(np.frombuffer(handle.read(8), dtype="<i8", count=1)[0])
        raw = handle.read(count * storage.dtype.itemsize)
        if count != storage.count or len(raw) != count * storage.dtype.itemsize:
            raise pickle.UnpicklingError("a storage's data is cut short or of another size than announced")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _arrays_in(content)


def load_torch_file(path: Path) -> Any:
    """The content of a PyTorch .pth file in the legacy format (a state dict: NumPy arrays in
    plain containers), read without PyTorch and without running code from it, or an
    UnreadableWeights error saying in one line why it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _read_torch_legacy(handle)
    except OSError as error:
        raise UnreadableWeights(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # whatever a malformed stream makes the unpickler raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableWeights(f"{path} is not a PyTorch weights file this tool can read ({reason[:160]})") from None


def save_weights_file(path: Path, content: Any) -> None:
    """paddle.save, written atomically."""
    write_atomically(Path(path), lambda partial: paddle.save(content, str(partial)))
