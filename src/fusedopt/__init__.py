"""fusedopt: fused optimizer parameter-update kernels for NumPy arrays.

One pass over parameters, gradients and state per step. See ``fusedopt.SGD``,
``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop``, ``Adamax``, ``Adadelta``, ``Lion``;
``fusedopt.functional`` for the
one-buffer kernels; ``fusedopt.backends.available()`` for what runs here.
"""

from . import backends, functional, optim, schedules
from .flat import FlatParams
from .optim import Optimizer

# one optimizer class per algorithm (fusedopt.algorithms): SGD, Adam, AdamW, ...
globals().update(optim.CLASSES)

__version__ = "0.1.0"

__all__ = [*optim.CLASSES, "FlatParams", "Optimizer", "backends", "schedules",
           "functional", "__version__"]
