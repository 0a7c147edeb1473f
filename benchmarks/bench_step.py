"""One optimizer step per algorithm x implementation x size (float32), for
pytest-benchmark. The same providers as ``fusedopt-bench``, which interleaves them and
is the source of the README's figures; this suite keeps history and comparisons
(``--benchmark-autosave``, ``--benchmark-compare``).

    python -m pytest benchmarks --benchmark-group-by=param:optimizer,param:size \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name

16M elements is run for Adam only (the DRAM-bound case; the others move fewer bytes
per element through the same kernels).
"""

from __future__ import annotations

import pytest

from fusedopt.bench.providers import CONFIGS, ProviderUnavailable, make, providers, traffic

SIZES = {"1K": 1 << 10, "1M": 1 << 20, "16M": 1 << 24}
CASES = [(o, s) for o in CONFIGS for s in SIZES if s != "16M" or o == "adam"]


@pytest.mark.parametrize("optimizer,size", CASES)
@pytest.mark.parametrize("provider", list(providers()))
def test_step(benchmark, provider, optimizer, size):
    n = SIZES[size]
    try:
        step = make(provider, optimizer, n)
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
    benchmark.extra_info.update(n=n, bytes_per_step=traffic(optimizer, "float32") * n)
    rounds = 1000 if n <= 1 << 10 else (50 if n <= 1 << 20 else 10)
    if provider == "fusedopt-numpy" and n > 1 << 20:
        rounds = 3
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
