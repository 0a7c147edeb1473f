"""``python -m fusedopt``: what fusedopt found and picked here (``show_config``)."""

from ._config import show_config

show_config()
