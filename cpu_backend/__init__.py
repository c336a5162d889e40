"""The CPU path: llama.cpp through llama-cpp-python's low-level bindings.

llama-cpp-python's wheel builds llama.cpp with OpenMP, whose threads spin at every
barrier before they sleep. With another process on a core, a spinning thread waits for
one that is not running and decode collapses (benchmarks/bench_contention.py, 1.1B
Q4_K_M on 2 shared cores: 0.28 tok/s with libgomp's default against 3.05 with one
thread and 2.74 with passive waiting; with one more busy process 0.19, 1.99 and 6.08).
So OpenMP waits passively unless the user chose otherwise. This must happen before
llama_cpp is loaded (OpenMP reads its environment once), and every import of llama_cpp
in localllm goes through this package.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
