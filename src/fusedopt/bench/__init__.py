"""Benchmark support: the implementations compared per step and the roofline kernel.

``providers.make(name, n)`` returns a zero-argument callable doing one Adam step over
``n`` float32 elements with that implementation; ``benchmarks/`` times them.
"""
