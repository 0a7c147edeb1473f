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


#: per algorithm: its rule, number of boolean options, state slots and host scalars
ALGORITHMS = {"sgd": (rules.sgd, 3, 1, 4), "adam": (rules.adam, 3, 3, 8),
              "adagrad": (rules.adagrad, 1, 1, 3), "rmsprop": (rules.rmsprop, 3, 3, 6),
              "lion": (rules.lion, 1, 1, 6), "lamb": (rules.lamb, 1, 2, 8)}


def example_args(name, layout="float32"):
    """One call of ``name``'s kernel with every option on and every slot present:
    float32 arrays (``layout`` "bf16": uint16 bf16 bits, as bf16 parameters and state
    reach it; "master": a float32 parameter, bf16 gradient and state, and the bf16
    ``out`` of master weights), float scalars, and the parallel loop."""
    rule, nflags, nslots, nscalars = ALGORITHMS[name]
    bf16 = np.full(64, 0x3F00, np.uint16)  # 0.5
    f32 = np.full(64, 0.5, np.float32)
    p = f32.copy() if layout in ("float32", "master") else bf16.copy()
    arrays = [f32.copy() if layout == "float32" else bf16.copy()
              for _ in range(nslots + 1)]
    out = bf16.copy() if layout == "master" else None
    kernel = numba_cpu._template(rule, (True,) * nflags, nslots)
    return kernel, (p, arrays[0], (0.25,) * nscalars, 0.25, 12345, out, True,
                    *arrays[1:])


LAYOUTS = ([(name, "float32") for name in ALGORITHMS]
           + [(name, layout) for name in ("sgd", "adam") for layout in ("bf16", "master")])


@pytest.mark.parametrize("name, layout", LAYOUTS)
def test_float32_kernel_has_no_float64_math(name, layout):
    kernel, args = example_args(name, layout)
    fresh = numba.njit(**{**numba_cpu.JIT_OPTIONS, "cache": False})(kernel)
    fresh(*args)
    (sig,) = fresh.signatures
    params = set(inspect.signature(kernel).parameters)
    typemap = fresh.overloads[sig].type_annotation.typemap
    leaked = {name: str(t) for name, t in typemap.items()
              if "float64" in str(t) and name.removeprefix("arg.") not in params
              and not name.startswith("$const")}
    assert not leaked, f"float64 values in {name} ({layout}): {leaked}"
    llvm = fresh.inspect_llvm(sig)
    assert "parfor" in llvm  # the prange loop's body is part of what is checked
    assert not DOUBLE_MATH.findall(llvm), DOUBLE_MATH.findall(llvm)[:3]
    assert not F64_INTRINSIC.findall(llvm), F64_INTRINSIC.findall(llvm)[:3]
    assert re.search(r"<\d+ x float>", llvm), "the loop did not vectorise"


def test_kernels_are_cached_under_the_hash_of_what_they_call():
    """Numba's cache is keyed on a kernel's own file and closure: every kernel's
    closure holds the hash of the rules, lowbit and the shared body, so editing a
    rule recompiles instead of loading stale machine code."""
    from fusedopt.backends import template

    digest = hashlib.sha256(Path(rules.__file__).read_bytes()
                            + Path(lowbit.__file__).read_bytes()
                            + Path(template.__file__).read_bytes()).hexdigest()[:15]
    assert template.SOURCES == int(digest, 16)
    step = template.element(rules.adam, (True, True, True), 3)
    assert template.SOURCES in [c.cell_contents for c in step.__closure__]
    loop = numba_cpu._template(rules.adam, (True, True, True), 3)
    assert step.__code__.co_code in [c.cell_contents.__code__.co_code
                                     for c in loop.__closure__
                                     if callable(c.cell_contents)]
    stats = numba_cpu._grad_stats.py_func
    assert template.SOURCES in [c.cell_contents for c in stats.__closure__]
