"""The float32 kernels compute in float32: no float64 arithmetic anywhere.

A Python float or an integer literal in a rule promotes the expression to float64 and
halves the SIMD width (3.5x slower at 1M elements) while every parity test still
passes, so this is checked on the compiled code itself: the typed IR (only the kernel's
scalar arguments, before their cast, may be float64) and the LLVM IR (no double
arithmetic, only the argument casts), for every kernel, serial and parallel loops.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from fusedopt import lowbit, rules  # noqa: E402
from fusedopt.backends import numba_cpu  # noqa: E402

# double arithmetic, widening, or a call returning double (other than unboxing a
# Python float argument); passing the float64 arguments along is allowed.
DOUBLE_MATH = re.compile(
    r"= (?:(?:fadd|fsub|fmul|fdiv|frem|fneg|fcmp \w+|fpext)\b[^\n]*\bdouble\b"
    r"|call (?:\w+ )*double @(?!PyFloat_AsDouble))[^\n]*")
F64_INTRINSIC = re.compile(r"@llvm\.\w+\.(?:f64|v\d+f64)\b")


def example_args(kernel, layout="float32"):
    """Arguments for one call of ``kernel``: float32 arrays (``layout`` "bf16": uint16
    bf16 bits, as bf16 parameters and state reach it; "master": a float32 parameter,
    bf16 gradient and state, and the bf16 ``out`` of master weights), floats, bools."""
    bf16 = np.full(64, 0x3F00, np.uint16)  # 0.5
    args = []
    for name in inspect.signature(kernel.py_func).parameters:
        if name in ("p", "g", "m", "v", "vmax", "buf", "acc", "sq", "gavg"):
            args.append(np.full(64, 0.5, np.float32) if layout == "float32" or (
                layout == "master" and name == "p") else bf16.copy())
        elif name in ("decay", "decoupled", "maximize", "nesterov", "parallel"):
            args.append(True)
        elif name == "seed":
            args.append(12345)
        elif name == "out":
            args.append(bf16.copy() if layout == "master" else None)
        else:
            args.append(0.25)
    return args


def all_options_on(factory):
    """The kernel with every boolean option on (the most code in its loop)."""
    return factory(*[True] * len(factory.flags))


LAYOUTS = ([(all_options_on(k), "float32") for k in numba_cpu.KERNELS]
           + [(all_options_on(k), layout) for k in (numba_cpu._sgd, numba_cpu._adam)
              for layout in ("bf16", "master")])


@pytest.mark.parametrize("kernel, layout", LAYOUTS,
                         ids=lambda x: getattr(x, "py_func", x).__qualname__.split(".")[0]
                         if hasattr(x, "py_func") else x)
def test_float32_kernel_has_no_float64_math(kernel, layout):
    fresh = numba.njit(**{**numba_cpu.JIT_OPTIONS, "cache": False})(kernel.py_func)
    fresh(*example_args(kernel, layout))
    (sig,) = fresh.signatures
    params = set(inspect.signature(kernel.py_func).parameters)
    typemap = fresh.overloads[sig].type_annotation.typemap
    leaked = {name: str(t) for name, t in typemap.items()
              if "float64" in str(t) and name.removeprefix("arg.") not in params
              and not name.startswith("$const")}
    assert not leaked, f"float64 values in {kernel.py_func.__qualname__}: {leaked}"
    llvm = fresh.inspect_llvm(sig)
    assert "parfor" in llvm  # the prange loop's body is part of what is checked
    assert not DOUBLE_MATH.findall(llvm), DOUBLE_MATH.findall(llvm)[:3]
    assert not F64_INTRINSIC.findall(llvm), F64_INTRINSIC.findall(llvm)[:3]
    assert re.search(r"<\d+ x float>", llvm), "the loop did not vectorise"


def test_rules_hash_pinned_in_kernel_module():
    """Numba's cache only tracks numba_cpu.py's own content (see RULES_SHA256)."""
    digest = hashlib.sha256(Path(rules.__file__).read_bytes()
                            + Path(lowbit.__file__).read_bytes()).hexdigest()[:16]
    assert numba_cpu.RULES_SHA256 == digest, (
        f"rules.py or lowbit.py changed: set RULES_SHA256 = {digest!r} in "
        "fusedopt/backends/numba_cpu.py, or cached kernels keep the old code")
