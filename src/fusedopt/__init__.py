"""fusedopt: fused optimizer parameter-update kernels for NumPy arrays.

One pass over parameters, gradients and state per step. See ``fusedopt.SGD``,
``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop``; ``fusedopt.functional`` for the
one-buffer kernels; ``fusedopt.backends.available()`` for what runs here.
"""

from . import backends, functional, schedules
from .flat import FlatParams
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop

__version__ = "0.1.0"

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "FlatParams", "Optimizer", "RMSprop",
           "backends", "schedules",
           "functional", "__version__"]
