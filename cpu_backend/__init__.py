"""The CPU path: llama.cpp through llama-cpp-python's low-level bindings.

llama-cpp-python's wheel builds llama.cpp with OpenMP: the threads of a forward pass meet
at a barrier after every graph node, and how a thread waits there decides the speed.
- A spin that is too short (`GOMP_SPINCOUNT=10000`, about 0.1 ms: our earlier
  default) ends before the engine has sampled a token and started the next pass, so the
  worker threads sleep and every decode step starts with a futex wake-up. Against
  llama-server (a probe on bench_vs_llama_server's requests, one localllm server per
  spin count, which benchmarks/bench_server_variants.py repeats with `--variant`; 2
  threads, 7-9 interleaved rounds, medians): 1.1B Q4_K_M decode 0.976x with 10k, 0.992x with 30k, 1.002x with 300k; SmolLM2-135M Q4_1
  decode 0.973x / 0.974x / 1.015x, its 4-stream aggregate 0.994x with 10k, 1.021x with 300k.
  `localllm run` without --threads: 84 tok/s with 10k, 93 with 300k (bench_contention,
  SmolLM2, 3 rounds).
- So the spin is libgomp's own default, 300,000 turns (about 3 ms), set explicitly. An
  earlier measurement that found it slow in the server (20 tok/s against 53) was taken
  while the flash-attention calibration left a second OpenMP team alive in the process
  (fixed since: it runs on a thread of its own), whose threads spun against the engine's.
- `OMP_WAIT_POLICY=PASSIVE` (our default once) sleeps at every barrier at once: each of
  the hundreds of barriers of a decode step then pays a futex wake-up. On 2 quiet cores,
  `localllm serve --threads 2` decoded SmolLM2-135M Q4_1 at 24 tok/s over HTTP, against
  52 with a spin (1.1B Q4_K_M: 10.2 against 12.3; quick runs, medians of 3).
With another process busy on a core, spinning loses to passive waiting when two threads
are forced (`--threads 2`: 16 tok/s with 10k, 9 with 300k, against 55 with one thread);
without `--threads` the backend follows the free cores (thread_policy) and decodes with
one thread there, which has no barriers at all (56 tok/s with either spin).
A user's own `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` wins. This must happen before
llama_cpp is loaded (OpenMP reads its environment once), and every import of llama_cpp
in localllm goes through this package.
"""

import os

# Busy-wait turns at an OpenMP barrier before sleeping (see above).
SPIN_COUNT = "300000"

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
