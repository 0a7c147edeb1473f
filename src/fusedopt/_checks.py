"""Argument checks shared by ``functional`` and ``optim``: every message names the
argument and says what was expected. They run before any write, and never copy."""

from __future__ import annotations

import math
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BF16: np.dtype | None = None


def bf16() -> np.dtype:
    """The dtype of bfloat16 arrays (``ml_dtypes.bfloat16``, as in JAX; kernels see
    their bits as uint16), imported on first use: importing ml_dtypes takes most of a
    second, which a process that never meets bfloat16 does not pay."""
    global _BF16
    if _BF16 is None:
        from ml_dtypes import bfloat16
        _BF16 = np.dtype(bfloat16)
    return _BF16


def is_bf16(dtype) -> bool:
    """Whether ``dtype`` is bfloat16, told without importing ml_dtypes: no array has
    that dtype before something has imported it."""
    return (_BF16 is not None or "ml_dtypes" in sys.modules) and dtype == bf16()


def param_dtype(dtype) -> bool:
    """Whether parameters may have ``dtype``: float32, float64 or bfloat16."""
    return dtype in FLOAT_DTYPES or is_bf16(dtype)


def kernel_view(flat: np.ndarray) -> np.ndarray:
    """What a kernel is handed: bf16 arrays as the uint16 view of their bits."""
    return flat.view(np.uint16) if is_bf16(flat.dtype) else flat


def param_array(x, name: str) -> np.ndarray:
    """A parameter the optimizer will update in place: a writeable, C-contiguous
    float32/float64 ndarray. Returns its flat view (no copy)."""
    if not isinstance(x, np.ndarray):
        if type(x).__module__.split(".")[0] == "torch":
            raise TypeError(
                f"{name}: a torch tensor on {getattr(x, 'device', '?')}; step torch "
                "tensors with fusedopt.torch (a drop-in for torch.optim, e.g. "
                "fusedopt.torch.Adam(model.parameters())), or pass the tensor's NumPy "
                "view, t.detach().numpy(), which shares its memory")
        raise TypeError(f"{name}: expected a numpy.ndarray or a CUDA array (with "
                        f"__cuda_array_interface__), got {type(x).__name__}")
    if not param_dtype(x.dtype):
        raise TypeError(f"{name}: expected dtype float32, float64 or bfloat16, got "
                        f"{x.dtype}")
    if not x.flags.writeable:
        raise ValueError(f"{name}: the array is read-only; an optimizer updates its "
                         "parameters in place")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array; updating a copy would "
                         "leave yours unchanged, so pass np.ascontiguousarray(...) and "
                         "train that array")
    return kernel_view(x if x.ndim == 1 else x.reshape(-1))


def like_param(x, param: np.ndarray, name, param_name, writeable: bool = False,
               shape: tuple | None = None) -> np.ndarray:
    """An array that must match ``param`` (a gradient or a state buffer) in shape
    (``shape`` where given: Adafactor's factors), dtype and layout. Returns its flat
    view (no copy). Names may be lazy (see ``_name``): ``("grads", 3)`` names
    ``grads[3]``. Overlap with other arrays is checked by the caller over everything
    the step touches (``_guard``)."""
    want = param.shape if shape is None else shape
    if (type(x) is np.ndarray and x.dtype is param.dtype and x.shape == want
            and x.flags.c_contiguous and (not writeable or x.flags.writeable)):
        return kernel_view(x if x.ndim == 1 else x.reshape(-1))  # the common case
    name, param_name = _name(name), _name(param_name)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.shape != want:
        raise ValueError(f"{name}: expected shape {want} "
                         f"({shape_of(param_name, shape, param.shape)}), got {x.shape}")
    if x.dtype != param.dtype:
        raise TypeError(f"{name}: expected dtype {param.dtype} (that of {param_name}), "
                        f"got {x.dtype}; cast it once with .astype(...)")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if writeable and not x.flags.writeable:
        raise ValueError(f"{name}: the array is read-only; it is updated in place")
    return kernel_view(x if x.ndim == 1 else x.reshape(-1))  # a subclass that passed


def shape_of(param_name: str, shape, param_shape) -> str:
    """Why an array must have the shape an error names: ``param``'s own, or the one
    its algorithm keeps for it (``shape``)."""
    return (f"that of {param_name}" if shape is None
            else f"for {param_name} of shape {tuple(param_shape)}")


def state_array(x, size: int, dtype: np.dtype, name) -> np.ndarray:
    """A live state array the kernel will update in place: ``size`` elements of
    ``dtype`` (the kernel dtype: uint16 for bf16 state, whose ``ml_dtypes.bfloat16``
    arrays are accepted too), C-contiguous and writeable, any shape. Returns its flat
    kernel view (no copy). Read from ``opt.state`` on every step: an entry a user
    replaced is checked like a loaded one."""
    if (type(x) is np.ndarray and x.dtype is dtype and x.size == size
            and x.flags.carray):  # C-contiguous, aligned, writeable: the common case
        return x if x.ndim == 1 else x.reshape(-1)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{_name(name)}: expected a numpy.ndarray of state, got "
                        f"{type(x).__name__}")
    shown = bf16() if dtype == np.uint16 else dtype
    if x.dtype != dtype and x.dtype != shown:
        raise TypeError(f"{_name(name)}: expected dtype {shown} (the state dtype of its "
                        f"parameter), got {x.dtype}")
    if x.size != size:
        raise ValueError(f"{_name(name)}: expected {size} elements (those of its "
                         f"parameter), got {x.size} (shape {x.shape})")
    if not x.flags.c_contiguous:
        raise ValueError(f"{_name(name)}: expected a C-contiguous array (the kernel "
                         "updates it in place through one flat view)")
    if not x.flags.writeable:
        raise ValueError(f"{_name(name)}: the array is read-only; state is updated in "
                         "place")
    return kernel_view(x.reshape(-1))


#: the largest step a state may hold: counts stay exact in float64 (torch keeps them
#: as float32 tensors) and ``step + 1`` fits every integer type the kernels use
MAX_STEP = 2 ** 53 - 2


def state_step(x, name) -> int:
    """A state's ``step``: an integral count in ``[0, MAX_STEP]``, as a Python int
    (NumPy integers, integral floats and 0-d arrays are accepted, as torch checkpoints
    hold them)."""
    if type(x) is int and 0 <= x <= MAX_STEP:
        return x  # the common case
    if type(x) is float and x.is_integer() and 0 <= x <= MAX_STEP:
        return int(x)  # a torch step tensor's value
    if isinstance(x, np.ndarray) and x.shape == ():
        x = x.item()
    if isinstance(x, (float, np.floating)) and math.isfinite(x) and float(x).is_integer():
        x = int(x)
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or not (
            0 <= x <= MAX_STEP):
        raise ValueError(f"{_name(name)}: expected an int >= 0 (a step count, at most "
                         "2**53 - 2), "
                         f"got {x!r}")
    return int(x)


def user_view(a: np.ndarray) -> np.ndarray:
    """The inverse of ``kernel_view``: uint16 bits shown as bfloat16."""
    return a.view(bf16()) if a.dtype == np.uint16 else a


def fill(a: np.ndarray, value: float) -> None:
    """``a.fill(value)``, rounding into bf16 bits for uint16 kernel views."""
    if a.dtype == np.uint16:
        a[...] = np.array(value, bf16()).view(np.uint16)
    else:
        a.fill(value)


def full_like(a: np.ndarray, value: float, dtype=None, shape=None) -> np.ndarray:
    """New state for ``a`` in ``dtype`` (default: ``a``'s; bf16 as uint16 bits), of
    ``a``'s shape or ``shape``. The device-array twin is ``numba_cuda.full_like``."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    shape = a.shape if shape is None else shape
    if dtype == np.uint16 or is_bf16(dtype):
        return np.full(shape, value, bf16()).view(np.uint16)
    return np.full(shape, value, dtype)


def _name(name) -> str:
    """Names are formatted only when an error is raised (they cost ~0.1 us each and
    the checks run on every step): ``("grads", 3)`` names ``grads[3]``,
    ``("state", 3, "exp_avg")`` names ``state[3]['exp_avg']`` (and
    ``("state", ("params", 3), "step")`` ``state[params[3]]['step']``),
    ``(1, "lr")`` names ``param_groups[1]['lr']``,
    ``("state_dict[...]", "lr")`` names ``state_dict[...]['lr']``, ``("", "lr")``
    and ``"lr"`` name ``lr``."""
    if isinstance(name, tuple) and len(name) == 3:
        return f"{name[0]}[{_name(name[1])}][{name[2]!r}]"
    if isinstance(name, tuple) and isinstance(name[1], int):
        return f"{name[0]}[{name[1]}]"
    if isinstance(name, tuple):
        where, key = name
        if isinstance(where, int):
            where = f"param_groups[{where}]"
        return f"{where}[{key!r}]" if where else key
    return str(name)


def number(x, name, low: float = 0.0, high: float = math.inf,
           high_open: bool = False) -> float:
    """A finite real in ``[low, high]`` (``[low, high)`` when ``high_open``)."""
    if type(x) is float and math.isfinite(x) and low <= x and (
            x < high if high_open else x <= high):
        return x  # the common case, first and fast
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"{_name(name)}: expected a real number, got {type(x).__name__}")
    x = float(x)
    too_high = x >= high if high_open else x > high
    if not math.isfinite(x) or x < low or too_high:
        bound = ")" if high_open else "]"
        raise ValueError(f"{_name(name)}: expected a finite number in [{low}, "
                         f"{high}{bound}, got {x}")
    return x


def seed(x, name) -> int:
    """A stochastic-rounding seed: an int >= 0 (a bool is refused)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
        raise ValueError(f"{_name(name)}: expected an int >= 0, got {x!r}")
    return int(x)


def flag(x, name) -> bool:
    if x is True or x is False:
        return x
    if not isinstance(x, np.bool_):
        raise TypeError(f"{_name(name)}: expected a bool, got {type(x).__name__}")
    return bool(x)


def betas(x, name) -> tuple[float, float]:
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(f"{_name(name)}: expected a pair (beta1, beta2), got {x!r}")
    try:
        return (number(x[0], "", 0.0, 1.0, high_open=True),
                number(x[1], "", 0.0, 1.0, high_open=True))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{_name(name)}: expected two numbers in [0, 1), got "
                        f"{tuple(x)!r}") from None


def state_scalar(x, name) -> float:
    """A state's scalar (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``): a finite
    real number, as a Python float (NumPy scalars and 0-d arrays are accepted)."""
    if type(x) is float and math.isfinite(x):
        return x  # the common case
    if isinstance(x, np.ndarray) and x.shape == ():
        x = x.item()
    if isinstance(x, (bool, np.bool_)) or not isinstance(
            x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
        raise ValueError(f"{_name(name)}: expected a finite number (per-tensor scalar "
                         f"state), got {x!r}")
    return float(x)


def _ordered_pair(x, name, names: str, valid, condition: str,
                  unbounded: bool = False) -> tuple[float, float]:
    """A pair ``(lo, hi)`` of finite numbers >= 0 (``names`` says which; ``hi`` may
    be inf when ``unbounded``) for which ``valid(lo, hi)`` holds (``condition`` says
    what that is)."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(f"{_name(name)}: expected a pair ({names}), got {x!r}")
    try:
        lo = number(x[0], "")
        hi = math.inf if unbounded and x[1] == math.inf else number(x[1], "")
    except (TypeError, ValueError):
        lo = hi = None
    if lo is None or not valid(lo, hi):
        raise ValueError(f"{_name(name)}: expected two numbers >= 0 with {condition}, "
                         f"got {tuple(x)!r}")
    return lo, hi


def etas(x, name) -> tuple[float, float]:
    """Rprop's ``(etaminus, etaplus)``: ``0 < etaminus < 1 < etaplus``, as torch."""
    return _ordered_pair(x, name, "etaminus, etaplus", lambda lo, hi: 0.0 < lo < 1.0 < hi,
                         "0 < etaminus < 1 < etaplus")


def step_sizes(x, name) -> tuple[float, float]:
    """Rprop's ``(step_size_min, step_size_max)``: ``0 <= min <= max``, the minimum
    finite, the maximum finite or inf (no cap)."""
    return _ordered_pair(x, name, "step_size_min, step_size_max",
                         lambda lo, hi: lo <= hi, "step_size_min <= step_size_max "
                         "(the maximum may be inf)", unbounded=True)


def step_count(x, name: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name}: expected an int >= 1 (the 1-based step), got {x!r}")
    return int(x)
