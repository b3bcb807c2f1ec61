"""NumPy data as pickled models hold it, restored as data: what :mod:`.allowlist` gives the NumPy globals a pickle names.

NVlabs keeps ``weight_gain = lr / np.sqrt(n)`` (a NumPy scalar) and StyleGAN3 its filter sizes and taps as
arrays. Allowed: dtypes, scalars from their bytes, arrays restored from their saved state (protocols 2-4) or over
the bytes the file holds (protocol 5). All build plain numbers; a dtype holding Python objects is refused, and
``numpy.ndarray`` is a name :func:`_array` accepts, never a class a pickle may create with a shape of its choosing.
"""

from __future__ import annotations

from pickle import UnpicklingError
from typing import Any

__all__ = ["NUMPY_DATA", "numpy_instance_classes", "numpy_value"]

#: The NumPy globals a pickle may name (NumPy 1.x and 2.x spellings).
NUMPY_DATA = (
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
    "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer",
)  # fmt: skip


def _scalar(dtype: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, type(None))):
        raise UnpicklingError(f"the file builds a NumPy scalar of {dtype!r} from {type(data).__name__} (only numbers are restored)")
    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    return scalar(dtype, data) if data is not None else scalar(dtype)


class _ArrayToken:
    """What a pickle's ``numpy.ndarray`` stands for: a name :func:`_array` accepts, never a class to create
    (``NEWOBJ`` of ``ndarray`` with a shape of the file's choosing would allocate it)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _ArrayToken()


def _array(cls: Any, shape: Any, code: Any) -> Any:
    """An empty array for the unpickler to give its saved state (how ``ndarray.__reduce__`` pickles: shape
    ``(0,)``; the saved state brings the real shape with its bytes, which NumPy checks against each other)."""
    import numpy as np

    if cls is not _NDARRAY:
        raise UnpicklingError(f"the file reconstructs {cls!r} as a NumPy array (only numpy.ndarray is restored)")
    if not isinstance(shape, (tuple, list)) or tuple(shape) != (0,):
        raise UnpicklingError(f"the file reconstructs a NumPy array of declared shape {shape!r} (NumPy pickles shape (0,))")
    return np.ndarray.__new__(np.ndarray, (0,), code)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C", axis_order: Any = None) -> Any:
    """A NumPy array over bytes the file holds (protocol 5's in-band buffers); its shape must fit those bytes."""
    import numpy as np

    ok = isinstance(buffer, (bytes, bytearray)) and isinstance(dtype, np.dtype) and not dtype.hasobject
    ok = ok and isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and order in ("C", "F")
    if not ok or axis_order is not None:
        raise UnpicklingError(
            f"the file builds a NumPy array from {type(buffer).__name__} as {dtype!r} {shape!r} (only numbers are restored)"
        )
    try:
        return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)
    except ValueError as exc:
        raise UnpicklingError(f"the file declares a NumPy array of shape {shape} that its bytes do not fill ({exc})") from None


def _dtype_classes() -> list[tuple[type, str]]:
    """The dtype classes NumPy dtypes are instances of (the unpickler checks them when it restores a dtype's
    state), under names no pickle can spell."""
    import numpy as np

    return [
        (cls, f"numpy.dtypes.{cls.__name__}\n(instances only)")
        for cls in vars(np.dtypes).values()
        if isinstance(cls, type) and issubclass(cls, np.dtype)
    ]


def numpy_value(name: str) -> Any:
    """What the unpickler gets for NumPy global ``name`` (one of :data:`NUMPY_DATA`)."""
    import numpy as np

    kinds = {"dtype": np.dtype, "ndarray": _NDARRAY, "scalar": _scalar, "_reconstruct": _array, "_frombuffer": _frombuffer}
    return kinds[name.rpartition(".")[2]]


def numpy_instance_classes(name: str) -> list[tuple[type, str]]:
    """The classes torch's unpickler must know for ``BUILD`` to restore what ``name`` made (a dtype's or an array's
    state), under names no pickle can spell (a pickle's names end at a newline)."""
    import numpy as np

    if name == "numpy.dtype":
        return _dtype_classes()
    return [(np.ndarray, "numpy.ndarray\n(instances only)")] if name == "numpy.ndarray" else []
