"""The CPU path: llama.cpp through llama-cpp-python's low-level bindings.

llama-cpp-python's wheel builds llama.cpp with OpenMP: the threads of a forward pass meet
at a barrier after every graph node, and how a thread waits there decides the speed.
- libgomp's default spins about 300,000 times (a few ms) before it sleeps: a thread still
  spins after a pass has ended, holding a core the server's own threads (the engine's
  Python work, the HTTP event loop) and the client need between two tokens, and with
  another process on a core it spins for a thread that is not running (bench_contention,
  1.1B Q4_K_M on 2 shared cores: 0.28 tok/s against 3.05 with one thread).
- `OMP_WAIT_POLICY=PASSIVE` (our default before) sleeps at every barrier at once: each of
  the hundreds of barriers of a decode step then pays a futex wake-up. On 2 quiet cores,
  `localllm serve --threads 2` decoded SmolLM2-135M Q4_1 at 24 tok/s over HTTP, against
  52 with a short spin (1.1B Q4_K_M: 10.2 against 12.3; quick runs, medians of 3).
- A short spin (`GOMP_SPINCOUNT`, 10,000 turns, a fraction of a millisecond) waits out the
  barriers inside a pass and sleeps between passes. 10k, 30k and 100k decoded alike on
  both models (within 5%); 1k was slower (47 tok/s on SmolLM2), so the shortest of the
  plateau is the default: it wastes the least spinning for a thread that is not running.
With another process busy on a core, any spinning loses to passive waiting when two
threads are forced (`--threads 2`); without `--threads` the backend follows the free
cores (thread_policy) and decodes with one thread there, which has no barriers at all.
A user's own `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` wins. This must happen before
llama_cpp is loaded (OpenMP reads its environment once), and every import of llama_cpp
in localllm goes through this package.
"""

import os

# Busy-wait turns at an OpenMP barrier before sleeping (see above).
SPIN_COUNT = "10000"

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
