"""fusedopt: fused optimizer parameter-update kernels for NumPy arrays.

One pass over parameters, gradients and state per step. See ``fusedopt.SGD``,
``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop``, ``Adamax``, ``Adadelta``, ``RAdam``,
``Rprop``, ``NAdam``, ``ASGD``, ``Lion``, ``LAMB``; ``fusedopt.functional`` for the one-buffer kernels; ``fusedopt.backends.available()`` for what runs here;
``fusedopt.show_config()`` (or ``python -m fusedopt``) for a bug report.
"""

from . import algorithms as _algorithms
from . import backends, functional, optim, schedules
from ._config import show_config
from .flat import FlatParams
from .optim import Optimizer

# one optimizer class per algorithm (fusedopt.algorithms): SGD, Adam, AdamW, ...
globals().update(optim.CLASSES)

__version__ = "0.1.0"



#: ``from fusedopt import LBFGS``: an ImportError that says why and what to use
__getattr__ = _algorithms.module_getattr(__name__)


__all__ = [*optim.CLASSES, "FlatParams", "Optimizer", "backends", "schedules",
           "functional", "show_config", "__version__"]
