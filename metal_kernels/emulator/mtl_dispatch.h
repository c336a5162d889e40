// Dispatch: the scheduler of one threadgroup, the grid loop, and the launch in a forked
// child with guarded buffers.
#pragma once

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mtl_threads.h"

namespace mtl {

// ---------------------------------------------------------------------------------------
// The scheduler for one threadgroup.
inline bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() && strcmp(a.file_name(), b.file_name()) == 0;
}

inline uint64_t next_random(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

inline bool run_threadgroup(Launch* L, int n, int schedule, uint64_t& rng) {
  int order[kMaxThreadsPerThreadgroup];
  for (int i = 0; i < n; i++) lane_start(&L->lanes[i]);
  for (int i = 0; i < L->n_tg_vars; i++) memset(L->tg_vars[i].ptr, 0xff, L->tg_vars[i].bytes);
  for (;;) {
    for (int i = 0; i < n; i++) order[i] = schedule == 1 ? n - 1 - i : i;
    if (schedule == 2)
      for (int i = n - 1; i > 0; i--) {
        int j = int(next_random(rng) % uint64_t(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
      }
    for (int k = 0; k < n; k++) {
      Lane* lane = &L->lanes[order[k]];
      if (lane->state == kRunnable) switch_to_lane(L, lane);
      if (L->failed) return false;
    }
    if (L->tg_bytes > kThreadgroupMemoryLimit) {
      fail("threadgroup memory of %zu bytes exceeds Metal's %zu", L->tg_bytes, kThreadgroupMemoryLimit);
      return false;
    }
    // Every live thread is blocked now. Complete the SIMD-group functions first.
    bool resolved = false;
    for (int base = 0; base < n; base += kSimdWidth) {
      Lane* by_lane[kSimdWidth] = {};
      Lane* first = nullptr;
      for (int i = base; i < n && i < base + kSimdWidth; i++) {
        Lane* lane = &L->lanes[i];
        if (lane->state != kAtSimd) continue;
        if (!first) {
          first = lane;
        } else if (!same_site(first->site, lane->site) || first->fn != lane->fn) {
          fail("divergent SIMD-group functions in SIMD group %d: lane %d waits at %s (%s:%u:%u), lane %d at %s (%s:%u:%u); "
               "keep SIMD-group functions in uniform control flow",
               base / kSimdWidth, int(first - &L->lanes[base]), first->op_name, first->site.file_name(), first->site.line(),
               first->site.column(), i - base, lane->op_name, lane->site.file_name(), lane->site.line(), lane->site.column());
          return false;
        }
        by_lane[i - base] = lane;
      }
      if (!first) continue;
      first->fn(by_lane);
      for (int i = 0; i < kSimdWidth; i++)
        if (by_lane[i]) by_lane[i]->state = kRunnable;
      resolved = true;
    }
    if (resolved) continue;
    Lane* first = nullptr;
    for (int i = 0; i < n; i++) {
      Lane* lane = &L->lanes[i];
      if (lane->state != kAtBarrier) continue;
      if (!first) {
        first = lane;
      } else if (!same_site(first->site, lane->site)) {
        fail("threads of one threadgroup wait at different barriers: thread %d at %s:%u:%u, thread %d at %s:%u:%u",
             int(first - L->lanes), first->site.file_name(), first->site.line(), first->site.column(), i,
             lane->site.file_name(), lane->site.line(), lane->site.column());
        return false;
      }
    }
    if (!first) return true;  // all threads finished
    for (int i = 0; i < n; i++)
      if (L->lanes[i].state == kAtBarrier) L->lanes[i].state = kRunnable;
  }
}

inline uint3 u3(int64_t x, int64_t y, int64_t z) { return uint3(uint(x), uint(y), uint(z)); }

inline int run_grid(Launch* L, const int64_t* dims, int schedule, uint64_t seed) {
  const int64_t* grid = dims;
  int64_t tg[3], groups[3];
  for (int d = 0; d < 3; d++) {
    tg[d] = dims[3 + d] < grid[d] ? dims[3 + d] : grid[d];  // MLX clips the threadgroup to the grid
    if (tg[d] < 1) tg[d] = 1;
    groups[d] = grid[d] > 0 ? (grid[d] + tg[d] - 1) / tg[d] : 0;
  }
  int64_t tg_threads = tg[0] * tg[1] * tg[2];
  if (tg_threads > kMaxThreadsPerThreadgroup) {
    fail("threadgroup of %lld threads exceeds Metal's maximum of %d", (long long)tg_threads, kMaxThreadsPerThreadgroup);
    return 1;
  }
  L->n_lanes = int(tg_threads);
  L->lanes = static_cast<Lane*>(calloc(size_t(tg_threads), sizeof(Lane)));
  char* stacks = static_cast<char*>(mmap(nullptr, size_t(tg_threads) * kFiberStack, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (!L->lanes || stacks == MAP_FAILED) {
    fail("cannot allocate %lld fiber stacks", (long long)tg_threads);
    return 1;
  }
  for (int64_t i = 0; i < tg_threads; i++) L->lanes[i].stack = stacks + i * kFiberStack;
  uint64_t rng = seed ? seed : 0x9E3779B97F4A7C15ull;
  for (int64_t gz = 0; gz < groups[2]; gz++)
    for (int64_t gy = 0; gy < groups[1]; gy++)
      for (int64_t gx = 0; gx < groups[0]; gx++) {
        int64_t g[3] = {gx, gy, gz}, actual[3];
        for (int d = 0; d < 3; d++) {
          int64_t left = grid[d] - g[d] * tg[d];
          actual[d] = left < tg[d] ? left : tg[d];  // edge threadgroups are partial
        }
        int n = int(actual[0] * actual[1] * actual[2]);
        int simdgroups = (n + kSimdWidth - 1) / kSimdWidth;
        for (int i = 0; i < n; i++) {
          Attrs& a = L->lanes[i].attrs;
          int64_t px = i % actual[0], py = (i / actual[0]) % actual[1], pz = i / (actual[0] * actual[1]);
          a.dispatch_quadgroups_per_threadgroup = uint((tg_threads + 3) / 4);
          a.dispatch_simdgroups_per_threadgroup = uint((tg_threads + kSimdWidth - 1) / kSimdWidth);
          a.dispatch_threads_per_threadgroup = u3(tg[0], tg[1], tg[2]);
          a.grid_origin = u3(0, 0, 0);
          a.grid_size = u3(grid[0], grid[1], grid[2]);
          a.quadgroup_index_in_threadgroup = uint(i / 4);
          a.quadgroups_per_threadgroup = uint((n + 3) / 4);
          a.simdgroup_index_in_threadgroup = uint(i / kSimdWidth);
          a.simdgroups_per_threadgroup = uint(simdgroups);
          a.thread_execution_width = kSimdWidth;
          a.thread_index_in_quadgroup = uint(i % 4);
          a.thread_index_in_simdgroup = uint(i % kSimdWidth);
          a.thread_index_in_threadgroup = uint(i);
          a.thread_position_in_grid = u3(gx * tg[0] + px, gy * tg[1] + py, gz * tg[2] + pz);
          a.thread_position_in_threadgroup = u3(px, py, pz);
          a.threadgroup_position_in_grid = u3(gx, gy, gz);
          a.threadgroups_per_grid = u3(groups[0], groups[1], groups[2]);
          a.threads_per_grid = u3(grid[0], grid[1], grid[2]);
          a.threads_per_simdgroup = kSimdWidth;
          a.threads_per_threadgroup = u3(actual[0], actual[1], actual[2]);
        }
        if (!run_threadgroup(L, n, schedule, rng)) return 1;
      }
  return 0;
}

inline int run_in_process(BodyFn body, void** args, const int64_t* dims, int schedule, uint64_t seed, char* err, int err_cap) {
  Launch launch = {};
  launch.body = body;
  launch.args = args;
  launch.err = err;
  launch.err_cap = err_cap;
  g_launch = &launch;
  int rc = run_grid(&launch, dims, schedule, seed);
  g_launch = nullptr;
  return rc;
}

// A buffer copy fenced by inaccessible pages on both sides, its data ending at most 15
// bytes before the upper fence (the start stays 16-byte aligned, Metal's largest natural
// alignment among the types kernels use): an access past either end faults.
struct Guarded {
  char* base;
  size_t length;
  char* data;
};

inline bool guarded_copy(const void* src, size_t bytes, bool shared, Guarded* g) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t data_pages = (bytes + 15 + page - 1) / page + (bytes == 0);
  g->length = (data_pages + 2) * page;
  void* base = mmap(nullptr, g->length, PROT_READ | PROT_WRITE,
                    (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return false;
  g->base = static_cast<char*>(base);
  mprotect(g->base, page, PROT_NONE);
  mprotect(g->base + (data_pages + 1) * page, page, PROT_NONE);
  char* end = g->base + (data_pages + 1) * page;
  g->data = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(end - bytes) & ~uintptr_t(15));
  if (bytes) memcpy(g->data, src, bytes);
  return true;
}

enum SlotKind { kSlotOther = 0, kSlotInput = 1, kSlotOutput = 2 };
constexpr int kMaxSlots = 256;

// Runs the grid in a forked child: inputs are guarded private copies there, outputs
// guarded shared mappings copied back here. Returns 0, or 1 with a message in err.
inline int launch(BodyFn body, void** args, const int* kinds, const int64_t* slot_bytes, int n_args,
                  const int64_t* dims, int schedule, uint64_t seed, int isolate, double timeout_s, char* err, int err_cap) {
  err[0] = 0;
  if (!isolate) return run_in_process(body, args, dims, schedule, seed, err, err_cap);
  if (n_args > kMaxSlots) {
    snprintf(err, err_cap, "too many kernel arguments");
    return 1;
  }
  void* host[kMaxSlots];
  Guarded outputs[kMaxSlots] = {};
  for (int i = 0; i < n_args; i++) {
    host[i] = args[i];
    if (kinds[i] != kSlotOutput) continue;
    if (!guarded_copy(host[i], size_t(slot_bytes[i]), true, &outputs[i])) {
      snprintf(err, err_cap, "cannot map %lld bytes for an output", (long long)slot_bytes[i]);
      return 1;
    }
    args[i] = outputs[i].data;
  }
  char* shared_err = static_cast<char*>(mmap(nullptr, size_t(err_cap), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  shared_err[0] = 0;
  FILE* child_stderr = tmpfile();
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    // The host's crash handlers (Python's faulthandler) must not report the child's crash.
    const int crash_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (int sig : crash_signals) signal(sig, SIG_DFL);
    if (child_stderr) dup2(fileno(child_stderr), 2);
    for (int i = 0; i < n_args; i++) {
      Guarded g;
      if (kinds[i] != kSlotInput) continue;
      if (!guarded_copy(host[i], size_t(slot_bytes[i]), false, &g)) {
        snprintf(shared_err, err_cap, "cannot map %lld bytes for an input", (long long)slot_bytes[i]);
        _exit(3);
      }
      args[i] = g.data;
    }
    int rc = run_in_process(body, args, dims, schedule, seed, shared_err, err_cap);
    _exit(rc ? 3 : 0);
  }
  int status = 0;
  bool timed_out = false;
  if (pid < 0) {
    snprintf(err, err_cap, "fork failed");
  } else {
    struct timespec t0, now, nap = {0, 50 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) break;
      clock_gettime(CLOCK_MONOTONIC, &now);
      double elapsed = double(now.tv_sec - t0.tv_sec) + 1e-9 * double(now.tv_nsec - t0.tv_nsec);
      if (timeout_s > 0 && elapsed > timeout_s) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        timed_out = true;
        break;
      }
      nanosleep(&nap, nullptr);
      if (nap.tv_nsec < 2000 * 1000) nap.tv_nsec *= 2;
    }
  }
  char text[4096] = {0};
  if (child_stderr) {
    fflush(child_stderr);
    rewind(child_stderr);
    size_t got = fread(text, 1, sizeof(text) - 1, child_stderr);
    text[got] = 0;
    fclose(child_stderr);
  }
  int rc = 1;
  if (pid < 0) {
  } else if (timed_out) {
    snprintf(err, err_cap, "the kernel did not finish within %.0f s (an endless loop?)%s%s", timeout_s, text[0] ? "\n" : "", text);
  } else if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    snprintf(err, err_cap, "the kernel crashed with signal %d (%s)%s%s", sig,
             sig == SIGSEGV || sig == SIGBUS ? "an out-of-bounds or misaligned memory access?" : strsignal(sig),
             text[0] ? "\n" : "", text);
  } else if (WEXITSTATUS(status) == 3) {
    snprintf(err, err_cap, "%s%s%s", shared_err, text[0] ? "\n" : "", text);
  } else if (WEXITSTATUS(status) != 0) {
    snprintf(err, err_cap, "the kernel stopped with exit status %d%s%s", WEXITSTATUS(status), text[0] ? "\n" : "", text);
  } else {
    rc = 0;
  }
  for (int i = 0; i < n_args; i++) {
    if (kinds[i] != kSlotOutput) continue;
    if (rc == 0 && slot_bytes[i]) memcpy(host[i], outputs[i].data, size_t(slot_bytes[i]));
    munmap(outputs[i].base, outputs[i].length);
    args[i] = host[i];
  }
  munmap(shared_err, size_t(err_cap));
  return rc;
}

}  // namespace mtl
