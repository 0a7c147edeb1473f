"""pytest-benchmark settings: one Adam step per round, medians compared in one run."""
