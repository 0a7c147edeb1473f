"""Render a Tempita template (``X.pyx.tp`` -> ``X.pyx``), as CMake does at build time:
``python kernels/tempita.py TEMPLATE OUTPUT``."""

import sys

from Cython import Tempita

template, output = sys.argv[1:]
with open(template) as f:
    text = Tempita.sub(f.read(), __name=template)
with open(output, "w") as f:
    f.write(text)
