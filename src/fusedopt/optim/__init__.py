"""Optimizer objects in the ``torch.optim`` style over NumPy arrays."""

from .adagrad import Adagrad
from .adam import Adam
from .adamw import AdamW
from .base import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD"]
