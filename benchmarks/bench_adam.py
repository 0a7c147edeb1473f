"""Adam float32 per-step time against textbook NumPy, torch fused, DeepSpeed's CPU
Adam and the same-traffic roofline kernel, at 1K, 1M and 16M elements.

    python -m pytest benchmarks/bench_adam.py --benchmark-columns=median,iqr,rounds \
        --benchmark-sort=name --benchmark-group-by=param:size

Compare medians within one run; the targets are ratios (DESIGN section 4).
"""

from __future__ import annotations

import pytest

from fusedopt.bench.providers import BYTES_PER_ELEMENT, PROVIDERS, ProviderUnavailable, make

SIZES = {"1K": 1 << 10, "1M": 1 << 20, "16M": 1 << 24}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_adam_step(benchmark, provider, size):
    n = SIZES[size]
    try:
        step = make(provider, n)
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
    benchmark.extra_info.update(n=n, bytes_per_step=BYTES_PER_ELEMENT["adam"] * n)
    rounds = 2000 if n <= 1 << 10 else (100 if n <= 1 << 20 else 15)
    if provider == "numpy-textbook" and n > 1 << 20:
        rounds = 5
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=2)
