"""The benchmark harness itself: fields, self-consistent figures, JSON round trip,
clear usage errors. Tiny sizes and fixed rounds keep it fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import CPU_BACKENDS
from fusedopt import _config
from fusedopt.bench import cli, harness
from fusedopt.bench import providers as prov

FIELDS = {"optimizer", "provider", "n", "dtype", "seconds_per_step", "gb_per_second",
          "speedup_vs_numpy", "roofline_fraction", "rounds"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--optimizer", "sgd,adam", "--sizes", "300,1K", "--dtype", "float32,float64",
            "--rounds", "3", "--no-peers", "--json", str(out / "b.json"),
            "--markdown", str(out / "b.md")]
    assert cli.main(argv) == 0
    return out, argv


def test_json_has_machine_and_every_field(run):
    out, argv = run
    data = json.loads((out / "b.json").read_text())
    assert data["command"] == ["fusedopt-bench", *argv]
    for key in ("cpu", "logical_cpus", "numpy", "numba", "fusedopt", "backends", "llvm_cpu"):
        assert key in data["machine"]
    providers = len(CPU_BACKENDS) + 1  # + roofline
    assert len(data["rows"]) == 2 * 2 * 2 * providers  # optimizers x sizes x dtypes
    for row in data["rows"]:
        assert set(row) == FIELDS
        assert row["rounds"] == 3


def test_figures_are_self_consistent(run):
    out, _ = run
    _, rows = cli.load_json(str(out / "b.json"))
    by_group = {}
    for r in rows:
        assert r.seconds_per_step > 0
        per_elem = prov.traffic(r.optimizer, r.dtype)
        assert r.gb_per_second == pytest.approx(per_elem * r.n / r.seconds_per_step / 1e9)
        by_group.setdefault((r.optimizer, r.n, r.dtype), {})[r.provider] = r
    for group in by_group.values():
        base, roof = group[harness.BASELINE], group[harness.ROOFLINE]
        assert base.speedup_vs_numpy == 1.0 and roof.roofline_fraction == 1.0
        for r in group.values():
            assert r.speedup_vs_numpy == pytest.approx(
                base.seconds_per_step / r.seconds_per_step)
            assert r.roofline_fraction == pytest.approx(
                roof.seconds_per_step / r.seconds_per_step)


def test_json_round_trips(run, tmp_path):
    out, _ = run
    machine, rows = cli.load_json(str(out / "b.json"))
    again = tmp_path / "again.json"
    again.write_text(json.dumps({"machine": machine, "command": [],
                                 "rows": harness.rows_to_dicts(rows)}))
    assert cli.load_json(str(again)) == (machine, rows)


def test_markdown_table(run):
    out, _ = run
    lines = (out / "b.md").read_text().splitlines()
    machine, _ = cli.load_json(str(out / "b.json"))
    assert lines[:2] == [f"Measured on: {harness.describe(machine)}", ""]
    assert lines[2].startswith("| optimizer | provider | n |")
    assert len(lines) == 4 + 2 * 2 * 2 * (len(CPU_BACKENDS) + 1)


def test_machine_names_the_instruction_set():
    flags = "fpu sse2 avx avx2 fma avx512f avx512bw".split()
    assert _config.widest_simd(flags) == "avx512f"
    assert _config.widest_simd(flags[:4]) == "avx2"
    assert _config.widest_simd(["fpu"]) == "none"
    info = {"cpu": "AMD EPYC", "cpu_family": 26, "llvm_cpu": "znver5", "simd": "avx512f",
            "logical_cpus": 2, "numba": "0.68.1", "torch": None}
    assert harness.describe(info) == ("AMD EPYC (family 26, znver5, avx512f), 2 logical "
                                      "CPUs; numba 0.68.1")


def test_traffic_is_minimal_bytes():
    assert prov.traffic("adam", "float32") == 28
    assert prov.traffic("sgd", "float32") == 20
    assert prov.traffic("adam", "float64") == 56


@pytest.mark.parametrize("argv,message", [
    (["--optimizer", "lbfgs"], "invalid choice(s) ['lbfgs']"),
    (["--sizes", "12Q"], "not a size: '12Q'"),
    (["--sizes", "1.5"], "not a size: '1.5' (expected a whole count"),
    (["--sizes", ""], "no size in ''"),
    (["--sizes", ","], "no size in ','"),
    (["--dtype", "float16"], "invalid choice(s) ['float16']"),
    (["--rounds", "0"], "--rounds: must be >= 1"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_flags_get_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fusedopt-bench" in err and message in err


def test_quick_covers_every_algorithm_and_backend(capsys):
    assert cli.main(["--quick", "--sizes", "64", "--rounds", "1", "--no-peers"]) == 0
    table = capsys.readouterr().out
    for opt in cli.OPTIMIZERS:
        for backend in CPU_BACKENDS:
            assert f"{opt:<9}  fusedopt-{backend}" in table


def test_every_state_layout_has_a_row(capsys):
    """``--optimizer layouts`` times each other state layout (one kernel
    specialisation each) against its own roofline traffic."""
    assert prov.traffic("adam-amsgrad", "float32") == 36  # 5 reads + 4 writes
    assert prov.traffic("sgd-plain", "float32") == 12
    assert prov.traffic("rmsprop-centered", "float32") == 28
    assert cli.main(["--optimizer", "layouts", "--sizes", "64", "--rounds", "1",
                     "--no-peers", "--backend", "numba,cython"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    for layout in prov.LAYOUTS:
        for provider in ("fusedopt-numba", "fusedopt-cython", "roofline"):
            assert [layout, provider] in [r[:2] for r in rows], (layout, provider)


def test_every_layout_with_bf16_state_has_a_row(capsys):
    """``--optimizer bf16``: each layout that keeps state, with bfloat16 state, against
    the roofline of its own bytes (2 per state element)."""
    assert prov.traffic("adam-bf16", "float32") == 20
    assert prov.traffic("sgd-bf16", "float32") == 16
    assert set(prov.BF16_STATE) == {f"{name}-bf16" for name, c in prov.CONFIGS.items()
                                    if c[2] > 0 and not name.endswith("-bf16")
                                    and name not in prov.MATRIX}
    assert cli.main(["--optimizer", "bf16", "--sizes", "64", "--rounds", "1",
                     "--no-peers", "--backend", "numba,cython"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    for name in prov.BF16_STATE:
        for provider in ("fusedopt-numba", "fusedopt-cython", "roofline"):
            assert [name, provider] in rows, (name, provider)


def test_matrix_algorithms_have_rows(capsys):
    """Adafactor and Muon are timed on a matrix of n elements, as near square as n
    allows; Adafactor against the roofline of its 24 bytes (float32), Muon (bound by
    its matrix products) with no roofline row, and only when asked for by name."""
    assert [prov.shape_of("adafactor", n) for n in (1 << 20, 1 << 24, 96, 7)] == [
        (1024, 1024), (4096, 4096), (8, 12), (1, 7)]
    assert prov.shape_of("adam", 96) == (96,)
    assert prov.traffic("adafactor", "float32") == 24
    assert "adafactor" in cli.OPTIMIZERS and "muon" not in cli.OPTIMIZERS
    assert cli.main(["--optimizer", "adafactor,muon", "--sizes", "96", "--rounds", "1",
                     "--no-peers", "--backend", "numba,cython"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:2] for line in out.splitlines()]
    for name in ("adafactor", "muon"):
        for provider in ("fusedopt-numba", "fusedopt-cython", "fusedopt-numpy"):
            assert [name, provider] in rows, (name, provider)
    assert ["adafactor", "roofline"] in rows and ["muon", "roofline"] not in rows
    assert ("skipped roofline: not applicable: Muon's step is bound by its matrix "
            "products, not by memory (for muon)") in out


def test_plot_is_written(run, tmp_path):
    """The plot names the machine and says which way is better; every panel shown
    has data."""
    pytest.importorskip("matplotlib")
    out, _ = run
    machine, rows = cli.load_json(str(out / "b.json"))
    fig = cli.write_plot(rows, str(tmp_path / "b.png"), harness.describe(machine))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig._suptitle.get_text() == f"Measured on: {harness.describe(machine)}"
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["sgd", "adam"]
    assert all(ax.lines for ax in shown)
    assert "higher is better" in shown[0].get_ylabel()


def _row(optimizer, provider, fraction):
    return harness.Row(optimizer=optimizer, provider=provider, n=1024, dtype="float32",
                       seconds_per_step=1e-3, gb_per_second=1.0, speedup_vs_numpy=None,
                       roofline_fraction=fraction, rounds=3, samples=[1e-3])


def test_the_torch_row_says_which_torch_step_it_is():
    rows = [_row("adam", "torch", 0.5), _row("rmsprop", "torch", 0.5),
            _row("adam:gpt2-small", "torch", 0.5), _row("adam", "fusedopt-numba", 0.9)]
    assert [cli.provider_label(r) for r in rows] == [
        "torch fused=True", "torch default", "torch fused=True", "fusedopt-numba"]
    assert "| adam | torch fused=True |" in cli.format_markdown(rows)


def test_a_roofline_fraction_above_one_is_marked_not_stated():
    """Nothing moves fewer bytes than the roofline kernel: a fraction above 1.0 is
    the machine's noise, and the table says so instead of presenting it."""
    clean = cli.format_markdown([_row("adam", "fusedopt-numba", 0.97)])
    assert "0.97 |" in clean and cli.ROOFLINE_NOTE not in clean
    over = [_row("adam", "fusedopt-numba", 1.08)]
    for text in (cli.format_markdown(over), cli.format_table(over)):
        assert "1.08*" in text and text.endswith(cli.ROOFLINE_NOTE)


def test_a_skipped_peer_says_why():
    """Not applicable (no such optimizer in that library) and not installed are told
    apart."""
    pytest.importorskip("torch")  # without it, torch's row says it is not installed
    with pytest.raises(prov.ProviderUnavailable, match="not applicable: torch.optim has "
                       "no LAMB"):
        prov.make("torch", "lamb", 64)
    with pytest.raises(prov.ProviderUnavailable, match="not applicable: DeepSpeed's CPU "
                       "optimizer is Adam and AdamW only"):
        prov.make("deepspeed", "sgd", 64)


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fusedopt.bench", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--quick" in out.stdout


def test_lowbit_reports_every_provider_with_its_bytes(tmp_path, capsys):
    """``--lowbit`` end to end at a tiny size: every fusedopt row (numba and cython
    bf16 state, bf16 params, master weights) with its own bytes per element and the
    roofline of those bytes; a peer that cannot run is named with the reason."""
    from fusedopt.bench import cli, lowbit
    assert cli.main(["--lowbit", "--sizes", "4K", "--rounds", "2",
                     "--json", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    rows = {r["provider"]: r for r in json.loads((tmp_path / "l.json").read_text())["rows"]}
    for name in ("fusedopt", "fusedopt-bf16-state", "cython-bf16-state", "fusedopt-bf16",
                 "fusedopt-bf16-master", "roofline-28", "roofline-20", "roofline-14"):
        assert rows[name]["bytes_per_element"] == lowbit.BYTES[name]
        assert rows[name]["rounds"] == 2 and rows[name]["seconds_per_step"] > 0
        assert rows[name]["roofline_fraction"] > 0
        assert f"| 4K | {name} | {lowbit.BYTES[name]} |" in out
    for name in ("torch", "deepspeed", "deepspeed-bf16"):
        assert name in rows or f"skipped {name}" in out


def test_time_placements_pools_fresh_builds_and_keeps_the_previous_alive():
    """Every placement is a fresh build, timed and pooled; a build's arrays live until
    the next build exists (so the allocator cannot hand back the same pages)."""
    import weakref
    built, alive_at_build = [], []

    class Arrays:
        def step(self):
            pass

    def build():
        alive_at_build.append([ref() is not None for ref in built])
        arrays = Arrays()
        built.append(weakref.ref(arrays))
        return {"a": arrays.step, "b": arrays.step}, {"a": 1, "b": 2}, None

    samples = harness.time_placements(build, budget=1.0, rounds=6, placements=3)
    assert len(built) == 3
    assert alive_at_build == [[], [True], [False, True]]
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6}
    assert all(ref() is None for ref in built)


def test_time_rounds_resets_before_each_implementations_untimed_step():
    """Implementations sharing arrays: ``reset`` runs before each one's samples, so
    the untimed step and the timed batch of every sample follow it directly."""
    log = []
    steps = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    samples = {}
    harness._time_rounds(steps, {"a": 2, "b": 1}, samples, budget=0.0, rounds=2,
                         reset=lambda: log.append("reset"))
    assert log == ["reset", "a", "a", "a", "reset", "b", "b",   # round 0: a, b
                   "reset", "b", "b", "reset", "a", "a", "a"]   # round 1: rotated
    assert {k: len(v) for k, v in samples.items()} == {"a": 2, "b": 2}


LOWBIT_PARAMS = {  # provider: (role of the params it steps, params bf16, state bf16)
    "torch": ("param", False, False), "deepspeed": ("param", False, False),
    "fusedopt": ("param", False, False), "fusedopt-bf16-state": ("param", False, True),
    "cython-bf16-state": ("param", False, True), "fusedopt-bf16": ("param", True, True),
    "fusedopt-bf16-master": ("bf16_param", True, False),
    "deepspeed-bf16": ("param", True, True)}
LOWBIT_NEEDS = {"torch": ("torch",), "deepspeed": ("torch", "deepspeed"),
                "deepspeed-bf16": ("torch", "deepspeed")}


@pytest.mark.parametrize("name", sorted(LOWBIT_PARAMS))
def test_lowbit_providers_step_the_shared_arena(name):
    """Every ``--lowbit`` provider reads and writes the arena's memory, not arrays of
    its own: after a reset (params 0.5, grads 0.01, state 0 in both float32 and bf16
    views) one Adam step leaves, in the arena, each param at 0.5 - lr (the first step
    moves by lr along -sign(g)) and each first moment at 0.1 * g, in that provider's
    dtypes; the float32 master copy moves by lr as well."""
    from fusedopt.bench import lowbit
    for module in LOWBIT_NEEDS.get(name, ()):  # optional peers; cython is built in
        pytest.importorskip(module)
    arena = lowbit.Arena([(40,), (3, 5)])
    arena.reset()
    step = lowbit.MAKERS[name](arena)
    role, bf16_params, bf16_state = LOWBIT_PARAMS[name]

    def read(role, bf16):
        return (arena.flat(role, True).view(lowbit._bf16()).astype(np.float32) if bf16
                else arena.flat(role).copy())
    p0, g, master0 = read(role, bf16_params), read("grad", bf16_params), read("param", False)
    step()
    tol = 2 ** -8 if bf16_params else 1e-6  # bf16 params: within one bf16 step
    np.testing.assert_allclose(read(role, bf16_params), p0 - lowbit.LR, rtol=0, atol=tol)
    np.testing.assert_allclose(read("exp_avg", bf16_state), 0.1 * g,
                               rtol=2 ** -7 if bf16_state else 1e-6)
    if name == "fusedopt-bf16-master":
        np.testing.assert_allclose(read("param", False), master0 - lowbit.LR, atol=1e-6)


def test_lowbit_arena_reset_reads_the_same_in_float32_and_bf16():
    from fusedopt.bench import lowbit
    arena = lowbit.Arena([(6,), (2, 3)])
    arena.reset()
    for role, x in lowbit.Arena.ROLES.items():
        as_bf16 = arena.flat(role, True).view(lowbit._bf16()).astype(np.float32)
        np.testing.assert_allclose(as_bf16, x, rtol=2 ** -8)
        np.testing.assert_allclose(arena.flat(role), x, rtol=2 ** -7)
    assert [v.shape for v in arena.views("grad")] == [(6,), (2, 3)]
    assert [v.shape for v in arena.views("grad", True)] == [(6,), (2, 3)]


def test_lowbit_pools_placements_for_sizes_and_models(monkeypatch):
    from fusedopt.bench import lowbit
    seen = []
    monkeypatch.setattr(lowbit, "measure", lambda label, shapes, budget, rounds, skipped,
                        placements: seen.append((label, placements)) or [])
    monkeypatch.setattr(harness, "machine", lambda: {})
    assert cli.main(["--lowbit", "--sizes", "4K", "--placements", "4",
                     "--model", "gpt2-small"]) == 0
    assert seen == [("4K", 4), ("gpt2-small", 4)]


def test_each_reason_a_peer_was_skipped_is_kept():
    skipped = harness.Skipped()
    harness.skip(skipped, "deepspeed", "DeepSpeed is not installed", "adam")
    harness.skip(skipped, "deepspeed", "not applicable: Adam and AdamW only", "sgd")
    harness.skip(skipped, "deepspeed", "DeepSpeed is not installed", "adamw")
    assert skipped == {"deepspeed": "DeepSpeed is not installed (for adam, adamw); "
                                    "not applicable: Adam and AdamW only (for sgd)"}
