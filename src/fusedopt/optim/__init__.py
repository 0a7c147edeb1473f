"""Optimizer objects in the ``torch.optim`` style over NumPy arrays: one class per
algorithm of ``fusedopt.algorithms``, built from its declaration."""

from __future__ import annotations

from typing import Any

from .. import algorithms
from .base import Optimizer


def optimizer_class(algo: algorithms.Algorithm, base: type = Optimizer) -> type:
    """The optimizer class of ``algo``: its constructor has the algorithm's
    hyperparameters as real parameters (torch's names, order and defaults; keyword-only
    where torch's are) followed by the options every optimizer takes (``**options``,
    see :class:`Optimizer`); its docstring states the update formula."""
    init = algorithms.constructor(
        algo, f"fusedopt.optim.{algo.title}", {"Optimizer": Optimizer, "Any": Any},
        "**options: Any", "Optimizer.__init__(self, params, {hyper}, **options)")
    return type(algo.title, (base,), {
        "__doc__": algo.doc, "__module__": __name__, "__init__": init,
        "_algorithm": algo, "_group": algorithms.checked(f"{algo.title}Group", algo.params),
        "_kernel": algo.kernel.name,
        "_state_names": algo.kernel.slots})


#: one class per algorithm of fusedopt.algorithms.ALGORITHMS, by title
CLASSES: dict[str, type] = {}
for _algo in algorithms.ALGORITHMS:
    CLASSES[_algo.title] = optimizer_class(_algo, CLASSES.get(_algo.parent, Optimizer))
globals().update(CLASSES)

__all__ = ["Optimizer", "optimizer_class", *CLASSES]
