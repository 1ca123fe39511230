"""The restricted unpickler: plain containers and numpy arrays only, and bounded in what it builds.

Refusing every global but a few keeps a pickle from running code; that alone does not keep it small.
A few KB of pickle can (a) call an allowed constructor with a size (`bytes(10**15)`, an `ndarray` of
shape (10**12,)), (b) copy one memoised container many times (`list(x)` per REDUCE), or (c) build a
DAG of shared lists, each level holding the one below twice: small in memory, but 2**depth items to
whoever walks it (np.asarray, str, a loop over tubes). So each allowed constructor is wrapped with a
check of what it is about to allocate, charged to one budget per load, and the loaded object is walked
once, iteratively, counting shared parts each time they are reached, and refused past `MAX_OBJECTS`,
`MAX_ELEMENTS` or `MAX_DEPTH`. After that every walk of it by the readers is bounded by the same counts.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import io
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np

MAX_FILE_BYTES = 512 * 2**20  # UCF101v2-GT.pkl, the largest ACT pickle, has ~30 MB
MAX_OBJECTS = 2_000_000  # Python objects reached walking the result (UCF101-24's GT: ~60,000)
MAX_ELEMENTS = 100_000_000  # array elements + string/bytes lengths reached (UCF101-24's GT: ~3 million)
MAX_DEPTH = 32  # nesting of containers (an ACT pickle nests 4 deep)


class PickleRefused(ValueError):
    """A pickle that is refused: a global outside the allowed set, or beyond a bound (the message says)."""


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
             "complex", "bool")  # fmt: skip
_ALLOWED = {("builtins", n) for n in _BUILTINS} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 0-2 pickles store bytes (numpy array buffers)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
}
_SIZED = (list, tuple, set, frozenset, dict, OrderedDict)  # constructors that copy an iterable


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds plain containers and numpy arrays only, and refuses every other global.

    Every allowed constructor is handed out wrapped: its arguments are checked, and what it would
    allocate is charged to `self.budget` (elements) before it runs.
    """

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = MAX_ELEMENTS

    def find_class(self, module: str, name: str):
        module, name = _modern_name(module, name)
        if (module, name) not in _ALLOWED:
            raise PickleRefused(f"refused to load {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return self._guard(_latin1_encode, name)
        return self._guard(getattr(importlib.import_module(module), name), name)

    def _charge(self, elements: int, what: str) -> None:
        self.budget -= elements
        if self.budget < 0:
            raise PickleRefused(f"calls {what}() to build more than {MAX_ELEMENTS:,} elements in all")

    def _guard(self, ctor, name: str):
        def call(*args, **kwargs):
            # a class can be an argument too (_reconstruct(ndarray, ...)): hand over the class itself
            args = tuple(getattr(a, "wrapped", a) if callable(a) else a for a in args)
            if ctor in (bytes, bytearray, str) and args and not isinstance(args[0], (str, bytes, bytearray)):
                # bytes(n) allocates n bytes; str(x) of a shared nested list walks all of it
                raise PickleRefused(f"calls {name}() on a {type(args[0]).__name__}: pickles store text and "
                                    "bytes as data, not as a call")
            if ctor in _SIZED and args:
                self._charge(len(args[0]) if hasattr(args[0], "__len__") else MAX_ELEMENTS + 1, name)
            if name in ("ndarray", "_reconstruct"):  # ndarray(shape, dtype), _reconstruct(cls, shape, dtype)
                shape, dtype = (args[0], args[1:2]) if name == "ndarray" else (args[1], args[2:3])
                self._charge(_array_elements(shape, dtype[0] if dtype else float), name)
            return ctor(*args, **kwargs)

        call.wrapped = ctor
        return call


def _array_elements(shape, dtype) -> int:
    """Elements (in units of 8 bytes, at least one per item) an array of `shape` and `dtype` allocates."""
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise PickleRefused(f"builds an array of shape {shape!r}")
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError as e:
        raise PickleRefused(f"builds an array of dtype {dtype!r}") from e
    return math.prod(shape) * max(1, -(-itemsize // 8))


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol 0-2 pickles use it for bytes, with latin-1 / utf-8 only."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise PickleRefused("_codecs.encode of something other than text")
    if codecs.lookup(encoding).name not in ("iso8859-1", "utf-8"):
        raise PickleRefused(f"refused to load _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding, errors)


def _modern_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (__builtin__.unicode) and numpy<2 names (numpy.core.*) as spelled here."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module.startswith("numpy.core."):
        module = "numpy._core." + module[len("numpy.core.") :]
    return module, name


def check_built(obj) -> None:
    """Walk a loaded object once (shared parts counted every time they are reached) and refuse it past
    MAX_OBJECTS objects, MAX_ELEMENTS array elements and characters, or MAX_DEPTH levels."""
    objects, elements, stack = 1, 0, [(obj, 0)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, (str, bytes, bytearray, np.ndarray)):
            elements += x.size if isinstance(x, np.ndarray) else len(x)
            if elements > MAX_ELEMENTS:
                raise PickleRefused(f"holds more than {MAX_ELEMENTS:,} array elements and characters in all")
        children = _children(x)
        if len(children):
            objects += len(children)
            if objects > MAX_OBJECTS:
                raise PickleRefused(f"holds more than {MAX_OBJECTS:,} objects (shared parts counted each "
                                    "time they are reached)")
            if depth >= MAX_DEPTH:
                raise PickleRefused(f"nests deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in children)


def _children(x):
    if isinstance(x, dict):
        return [*x.keys(), *x.values()]
    if isinstance(x, (list, tuple, set, frozenset)):
        return x
    if isinstance(x, np.ndarray) and x.dtype == object:
        return x.ravel()
    return ()


def load(path: str | Path) -> object:
    """Load a pickle (Python 2 pickles too: str as latin-1) within the bounds above, running no code.

    Raises:
        PickleRefused: a refused global, or a bound exceeded.
        OSError, pickle.UnpicklingError, EOFError, ValueError...: an unreadable file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PickleRefused(f"is {size / 2**20:.0f} MiB; raylab reads at most "
                            f"{MAX_FILE_BYTES / 2**20:.0f} MiB of pickle")
    obj = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    check_built(obj)
    return obj
