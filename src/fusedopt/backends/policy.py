"""Host-side policy shared by the compiled backends (no Numba import here, so the
Cython backend works without it)."""

#: Arrays with at least this many elements are updated by all threads. Entering a
#: parallel region costs 2-4 us, more than a small tensor's whole update: measured on
#: 2 Zen 3 cores, float32 Adam (Numba), 1.4 us serial vs 3.0 us parallel at 1K
#: elements, 6.7 vs 6.2 at 16K, 13.4 vs 10.8 at 32K, 512 vs 256 at 1M.
PARALLEL_MIN_SIZE = 32768

#: the most state arrays (slots) an algorithm keeps per element (s0..s3), and the
#: columns of a multi-tensor call's table of addresses: parameter, gradient, slots
MAX_SLOTS = 4
TABLE_COLUMNS = 2 + MAX_SLOTS

#: A reduction pass (``Spec.norms``) sums fixed blocks of this many elements, each in
#: one thread, then the blocks' sums in order: its result does not depend on the
#: thread count or on taking the serial or the parallel loop.
REDUCE_BLOCK = 4096

#: Adafactor's row and column sums take blocks of this many rows of one matrix, each
#: summed by one thread with its own partial column sums, then the blocks' column
#: sums added in order: the same sums whatever the threads.
MEANS_ROWS = 64
