"""Reduced-precision storage, a concern of every optimizer: bfloat16 state
(``state_dtype="bfloat16"``, 2 bytes per element), bfloat16 parameters stepped with
stochastic rounding, or through float32 master copies (``master_weights=True``)."""

from __future__ import annotations

import numpy as np

from .. import _checks, _device, scalars

#: the state name of a bf16 parameter's float32 master copy (master_weights=True)
MASTER = "master_param"
#: the kernel view of bfloat16 arrays (their bits)
BITS = np.dtype(np.uint16)


class Precision:
    """The storage policy of ``Optimizer``: which dtype each tensor's state has, which
    tensors keep a master copy, and the seed of their stochastic rounding."""

    @property
    def master_weights(self) -> bool:
        """bfloat16 parameters are stepped through float32 master copies (fixed at
        construction)."""
        return self._master_weights

    @property
    def state_dtype(self) -> np.dtype | None:
        """The dtype state is stored in (None: the parameters'; fixed at
        construction)."""
        return self._state_dtype

    def _tensor_kinds(self) -> list[tuple[np.dtype, bool]]:
        """Per parameter, its state's kernel dtype and whether it has a master copy:
        facts of the construction (the parameters' dtypes, ``state_dtype``,
        ``master_weights``), so computed once per parameter."""
        if len(self._kinds) != len(self._flat):
            self._kinds = [(self._state_dtype_of(f), self._mastered(f))
                           for f in self._flat]
        return self._kinds

    def _check_lowbit(self, state_dtype, seed) -> tuple[np.dtype | None, int]:
        """Validate ``state_dtype`` and ``seed`` against the parameters and backend."""
        if state_dtype not in (None, "float32", "bfloat16"):
            raise ValueError("state_dtype: expected None, 'float32' or 'bfloat16', got "
                             f"{state_dtype!r}")
        seed = _checks.seed(seed, "seed")
        dtypes = {f.dtype for f in self._flat}
        if self.master_weights and np.dtype(np.uint16) not in dtypes:
            raise ValueError("master_weights: keeps float32 master copies of bfloat16 "
                             "parameters, and these parameters are "
                             f"{sorted(map(str, dtypes))}")
        bf16 = state_dtype == "bfloat16" or np.dtype(np.uint16) in dtypes
        if not bf16:
            if state_dtype == "float32" and dtypes != {np.dtype(np.float32)}:
                raise ValueError("state_dtype: 'float32' state is for bfloat16 "
                                 f"parameters; these are {sorted(map(str, dtypes))}")
            return (None if state_dtype is None else np.dtype(state_dtype)), seed
        kinds = getattr(self._impl, "BF16", ())
        if state_dtype == "bfloat16" and "state" not in kinds:
            raise ValueError("state_dtype: bfloat16 state runs on the numba, cuda and "
                             f"cython backends; backend {self.backend!r} keeps "
                             "float32/float64 only")
        if np.dtype(np.uint16) in dtypes and "params" not in kinds:
            raise ValueError("params: bfloat16 parameters run on the numba and cython "
                             f"backends; backend {self.backend!r} updates float32/float64 "
                             "only")
        if np.dtype(np.float64) in dtypes:
            raise ValueError("state_dtype: bfloat16 state is for float32 or bfloat16 "
                             "parameters, and some parameters are float64")
        return (None if state_dtype is None else np.dtype(
            _checks.bf16() if state_dtype == "bfloat16" else state_dtype)), seed

    def _new_state(self, flat, init: float, size: int | None = None):
        """A state array for the kernel view ``flat``, in the state dtype, of its size
        or ``size`` (Adafactor's factors)."""
        shape = None if size is None else (size,)
        if self._space is _device:  # allocated and filled by the CUDA backend
            return self._impl.full_like(flat, init, self._state_dtype_of(flat), shape)
        return _checks.full_like(flat, init, self._state_dtype_of(flat), shape)

    def _mastered(self, flat) -> bool:
        """Whether the kernel view ``flat`` is stepped through a float32 master copy."""
        return self.master_weights and flat.dtype == np.uint16

    @staticmethod
    def _master_copy(flat) -> np.ndarray:
        """The float32 master copy of the bf16 kernel view ``flat`` (exact)."""
        return _checks.user_view(flat).astype(np.float32)

    def _seed(self, flat, state, index: int) -> int:
        """The stochastic-rounding seed of this step (bf16 parameters), else 0."""
        if flat.dtype is not BITS:  # a kernel view's dtype: the builtin singleton
            return 0
        return scalars.rounding_seed(self.seed, state["step"] + 1, index)

    def _state_dtype_of(self, flat) -> np.dtype:
        """The dtype of ``flat``'s state (bf16 as uint16 bits, as kernels see it): the
        state dtype, else that of the array the kernel updates (a master copy's)."""
        dtype = self.state_dtype
        if dtype is None:
            dtype = np.dtype(np.float32) if self._mastered(flat) else flat.dtype
        return np.dtype(np.uint16) if _checks.is_bf16(dtype) else dtype
