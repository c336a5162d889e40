// The emulator's runtime: runs a compiled Metal kernel over a dispatch's grid with the
// threads of each threadgroup running concurrently, so barriers and SIMD-group functions
// mean what they mean on a GPU.
//
// Each GPU thread of a threadgroup is a fiber with its own stack. A fiber runs until it
// reaches a synchronization point (threadgroup_barrier, simdgroup_barrier or a simd_*
// function), then control returns to the scheduler. Once every live thread is blocked,
// the scheduler completes the SIMD-group functions (each SIMD group's waiting lanes, the
// active lanes, exchange values) or, when all live threads wait at a barrier, releases it.
// Lanes of one SIMD group waiting at different simd_* calls, or threads at different
// barriers, are reported as errors rather than guessed at: kernels keep SIMD-group
// functions and barriers in uniform control flow. Threadgroups run one after another;
// threadgroup memory (`threadgroup` variables, rewritten to statics by the emulator) is
// filled with 0xFF bytes (NaN for floats) at the start of each threadgroup, and outputs
// start as 0xFF bytes unless an init_value is given, so reading memory never written
// shows. The launch runs in a forked child so a crash (an out-of-bounds access, a
// sanitizer report) or an endless loop becomes an error message, not a dead test process;
// there every buffer sits between inaccessible pages, so reading or writing past an end
// crashes instead of quietly touching a neighbour.
#pragma once

#include <signal.h>
#include <stdarg.h>
#include <source_location>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "metal_types.h"

#if !defined(__x86_64__) || defined(MTL_FIBERS_UCONTEXT)
#define MTL_USE_UCONTEXT 1
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include <ucontext.h>
#endif

namespace metal {

enum class mem_flags : int { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4, mem_threadgroup_imageblock = 8 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

}  // namespace metal

namespace mtl {

using metal::uint;
using metal::uint3;

constexpr int kSimdWidth = 32;
constexpr int kMaxThreadsPerThreadgroup = 1024;
constexpr size_t kThreadgroupMemoryLimit = 32768;
constexpr size_t kFiberStack = 256 * 1024;

// The values of Metal's kernel attributes for one thread (names as in MLX's list).
struct Attrs {
  uint dispatch_quadgroups_per_threadgroup;
  uint dispatch_simdgroups_per_threadgroup;
  uint3 dispatch_threads_per_threadgroup;
  uint3 grid_origin;
  uint3 grid_size;
  uint quadgroup_index_in_threadgroup;
  uint quadgroups_per_threadgroup;
  uint simdgroup_index_in_threadgroup;
  uint simdgroups_per_threadgroup;
  uint thread_execution_width;
  uint thread_index_in_quadgroup;
  uint thread_index_in_simdgroup;
  uint thread_index_in_threadgroup;
  uint3 thread_position_in_grid;
  uint3 thread_position_in_threadgroup;
  uint3 threadgroup_position_in_grid;
  uint3 threadgroups_per_grid;
  uint3 threads_per_grid;
  uint threads_per_simdgroup;
  uint3 threads_per_threadgroup;
};

enum LaneState { kRunnable, kAtBarrier, kAtSimd, kDone };

struct Lane;
// Completes one SIMD-group function: by_lane[i] is the waiting lane with SIMD lane id i,
// or null where that lane is inactive (exited, or waiting elsewhere).
using CollectiveFn = void (*)(Lane* const* by_lane);

struct Lane {
  void* sp;
#ifdef MTL_USE_UCONTEXT
  ucontext_t ctx;
#endif
  char* stack;
  LaneState state;
  std::source_location site;
  CollectiveFn fn;
  const char* op_name;
  const void* in;
  void* out;
  uint32_t arg;
  Attrs attrs;
};

using BodyFn = void (*)(void** args, const Attrs& attrs);

struct TgVar {
  void* ptr;
  size_t bytes;
};

struct Launch {
  BodyFn body;
  void** args;
  Lane* lanes;
  int n_lanes;
  Lane* current;
  void* sched_sp;
#ifdef MTL_USE_UCONTEXT
  ucontext_t sched_ctx;
#endif
  TgVar tg_vars[64];
  int n_tg_vars;
  size_t tg_bytes;
  char* err;
  int err_cap;
  bool failed;
};

inline Launch* g_launch = nullptr;

inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void fail(const char* fmt, ...) {
  Launch* L = g_launch;
  if (L->failed) return;
  L->failed = true;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(L->err, L->err_cap, fmt, ap);
  va_end(ap);
}

// ---------------------------------------------------------------------------------------
// Fibers: a small stack switch on x86-64 (callee-saved registers only, no signal mask
// syscall), ucontext elsewhere.
#ifndef MTL_USE_UCONTEXT
extern "C" void mtl_fiber_switch(void** save_sp, void* new_sp);
extern "C" void mtl_fiber_trampoline();
__asm__(
    ".text\n"
    ".globl mtl_fiber_switch\n"
    ".hidden mtl_fiber_switch\n"
    ".type mtl_fiber_switch,@function\n"
    "mtl_fiber_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size mtl_fiber_switch, .-mtl_fiber_switch\n"
    ".globl mtl_fiber_trampoline\n"
    ".hidden mtl_fiber_trampoline\n"
    ".type mtl_fiber_trampoline,@function\n"
    "mtl_fiber_trampoline:\n"
    "  movq %r12, %rdi\n"
    "  callq *%r13\n"
    "  ud2\n"
    ".size mtl_fiber_trampoline, .-mtl_fiber_trampoline\n");
#endif

inline void lane_main(Lane* lane);

#ifdef MTL_USE_UCONTEXT
inline void lane_entry_uctx(int lo, int hi) {
  uintptr_t p = (uintptr_t(uint32_t(hi)) << 32) | uintptr_t(uint32_t(lo));
  lane_main(reinterpret_cast<Lane*>(p));
}
#else
inline void lane_entry_asm(void* p) { lane_main(static_cast<Lane*>(p)); }
#endif

inline void lane_start(Lane* lane) {
#ifdef MTL_USE_UCONTEXT
  getcontext(&lane->ctx);
  lane->ctx.uc_stack.ss_sp = lane->stack;
  lane->ctx.uc_stack.ss_size = kFiberStack;
  lane->ctx.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(lane);
  makecontext(&lane->ctx, (void (*)())lane_entry_uctx, 2, int(uint32_t(p)), int(uint32_t(p >> 32)));
#else
  // Initial frame for mtl_fiber_switch: six saved registers, then the return address.
  // r12 carries the lane, r13 the entry; the trampoline starts with a 16-byte aligned sp.
  uintptr_t top = (reinterpret_cast<uintptr_t>(lane->stack) + kFiberStack) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top - 72);
  sp[0] = nullptr;                                          // r15
  sp[1] = nullptr;                                          // r14
  sp[2] = reinterpret_cast<void*>(&lane_entry_asm);         // r13
  sp[3] = lane;                                             // r12
  sp[4] = nullptr;                                          // rbx
  sp[5] = nullptr;                                          // rbp
  sp[6] = reinterpret_cast<void*>(&mtl_fiber_trampoline);  // return address
  lane->sp = sp;
#endif
  lane->state = kRunnable;
}

inline void switch_to_lane(Launch* L, Lane* lane) {
  L->current = lane;
#ifdef MTL_USE_UCONTEXT
  swapcontext(&L->sched_ctx, &lane->ctx);
#else
  mtl_fiber_switch(&L->sched_sp, lane->sp);
#endif
  L->current = nullptr;
}

inline void switch_to_scheduler(Lane* lane) {
  Launch* L = g_launch;
#ifdef MTL_USE_UCONTEXT
  swapcontext(&lane->ctx, &L->sched_ctx);
#else
  mtl_fiber_switch(&lane->sp, L->sched_sp);
#endif
}

inline void lane_main(Lane* lane) {
  Launch* L = g_launch;
  L->body(L->args, lane->attrs);
  lane->state = kDone;
  switch_to_scheduler(lane);
  __builtin_trap();  // a finished lane is never resumed
}

// ---------------------------------------------------------------------------------------
// Synchronization points, called from kernel code.
inline Lane* current_lane() {
  Lane* lane = g_launch ? g_launch->current : nullptr;
  if (!lane) {
    fprintf(stderr, "metal emulator: a SIMD-group function or barrier ran outside a kernel\n");
    abort();
  }
  return lane;
}

inline void collective(const char* op_name, const void* in, void* out, uint32_t arg, CollectiveFn fn, const std::source_location& site) {
  Lane* lane = current_lane();
  lane->state = kAtSimd;
  lane->op_name = op_name;
  lane->in = in;
  lane->out = out;
  lane->arg = arg;
  lane->fn = fn;
  lane->site = site;
  switch_to_scheduler(lane);
}

inline void barrier(const std::source_location& site) {
  Lane* lane = current_lane();
  lane->state = kAtBarrier;
  lane->site = site;
  switch_to_scheduler(lane);
}

// Threadgroup variables register themselves the first time a thread declares them, so
// the runtime can poison them per threadgroup and check Metal's 32 KB limit.
inline void tg_register(void* ptr, size_t bytes) {
  Launch* L = g_launch;
  for (int i = 0; i < L->n_tg_vars; i++)
    if (L->tg_vars[i].ptr == ptr) return;
  if (L->n_tg_vars == 64) return;
  L->tg_vars[L->n_tg_vars++] = TgVar{ptr, bytes};
  L->tg_bytes += bytes;
  memset(ptr, 0xff, bytes);
}

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

// ---------------------------------------------------------------------------------------
// SIMD-group function bodies.
template <class T>
inline T poison() {
  T t;
  memset(static_cast<void*>(&t), 0xff, sizeof(T));
  return t;
}
template <class T>
inline const T& in_of(const Lane* l) {
  return *static_cast<const T*>(l->in);
}
template <class T>
inline T& out_of(Lane* l) {
  return *static_cast<T*>(l->out);
}

struct OpSum {
  template <class T>
  static T apply(T a, T b) { return a + b; }
};
struct OpProduct {
  template <class T>
  static T apply(T a, T b) { return a * b; }
};
struct OpMax {
  template <class T>
  static T apply(T a, T b) { return metal::max(a, b); }
};
struct OpMin {
  template <class T>
  static T apply(T a, T b) { return metal::min(a, b); }
};
struct OpAnd {
  template <class T>
  static T apply(T a, T b) { return a & b; }
};
struct OpOr {
  template <class T>
  static T apply(T a, T b) { return a | b; }
};
struct OpXor {
  template <class T>
  static T apply(T a, T b) { return a ^ b; }
};

template <class T, class Op>
inline void reduce_fn(Lane* const* by_lane) {
  // A pairwise tree over lane ids, the shape of a hardware butterfly reduction.
  T vals[kSimdWidth];
  bool have[kSimdWidth];
  for (int i = 0; i < kSimdWidth; i++) {
    have[i] = by_lane[i] != nullptr;
    if (have[i]) vals[i] = in_of<T>(by_lane[i]);
  }
  for (int step = 1; step < kSimdWidth; step *= 2)
    for (int i = 0; i + step < kSimdWidth; i += 2 * step) {
      if (have[i] && have[i + step]) vals[i] = Op::apply(vals[i], vals[i + step]);
      else if (have[i + step]) vals[i] = vals[i + step];
      have[i] = have[i] || have[i + step];
    }
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<T>(by_lane[i]) = vals[0];
}

template <class T, class Op, bool Inclusive>
inline void prefix_fn(Lane* const* by_lane) {
  bool started = false;
  T acc{};
  for (int i = 0; i < kSimdWidth; i++) {
    if (!by_lane[i]) continue;
    T v = in_of<T>(by_lane[i]);
    if (Inclusive) {
      acc = started ? Op::apply(acc, v) : v;
      out_of<T>(by_lane[i]) = acc;
    } else {
      out_of<T>(by_lane[i]) = started ? acc : T(0);
      acc = started ? Op::apply(acc, v) : v;
    }
    started = true;
  }
}

enum ShuffleKind { kShuffle, kDown, kUp, kXor, kRotateDown, kRotateUp, kBroadcastFirst };

// Metal: shuffle_down leaves the upper `delta` lanes their own value, shuffle_up the lower
// ones. Reading an inactive lane is undefined on a GPU: here it yields 0xFF bytes.
template <class T, ShuffleKind K>
inline void shuffle_fn(Lane* const* by_lane) {
  T vals[kSimdWidth];
  int first_active = -1;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) {
      vals[i] = in_of<T>(by_lane[i]);
      if (first_active < 0) first_active = i;
    }
  for (int i = 0; i < kSimdWidth; i++) {
    if (!by_lane[i]) continue;
    uint32_t a = by_lane[i]->arg;
    int src;
    switch (K) {
      case kShuffle: src = int(a); break;
      case kDown: src = i + int(a) < kSimdWidth ? i + int(a) : i; break;
      case kUp: src = i - int(a) >= 0 ? i - int(a) : i; break;
      case kXor: src = i ^ int(a); break;
      case kRotateDown: src = (i + int(a)) % kSimdWidth; break;
      case kRotateUp: src = ((i - int(a)) % kSimdWidth + kSimdWidth) % kSimdWidth; break;
      case kBroadcastFirst: src = first_active; break;
    }
    out_of<T>(by_lane[i]) = (src >= 0 && src < kSimdWidth && by_lane[src]) ? vals[src] : poison<T>();
  }
}

inline void bool_all_fn(Lane* const* by_lane) {
  bool r = true;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) r = r && in_of<bool>(by_lane[i]);
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<bool>(by_lane[i]) = r;
}
inline void bool_any_fn(Lane* const* by_lane) {
  bool r = false;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) r = r || in_of<bool>(by_lane[i]);
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<bool>(by_lane[i]) = r;
}
inline void is_first_fn(Lane* const* by_lane) {
  bool seen = false;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) {
      out_of<bool>(by_lane[i]) = !seen;
      seen = true;
    }
}
inline void no_data_fn(Lane* const*) {}

}  // namespace mtl

// ---------------------------------------------------------------------------------------
// The Metal names kernels call.
namespace metal {

using mtl_site = std::source_location;

inline void threadgroup_barrier(mem_flags, mtl_site site = mtl_site::current()) { mtl::barrier(site); }
inline void simdgroup_barrier(mem_flags, mtl_site site = mtl_site::current()) {
  mtl::collective("simdgroup_barrier", nullptr, nullptr, 0, &mtl::no_data_fn, site);
}

#define MTL_SIMD_REDUCE(name, Op)                                                        \
  template <class T>                                                                     \
  inline T name(T x, mtl_site site = mtl_site::current()) {                              \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, 0, &mtl::reduce_fn<T, mtl::Op>, site);                \
    return r;                                                                            \
  }
MTL_SIMD_REDUCE(simd_sum, OpSum)
MTL_SIMD_REDUCE(simd_product, OpProduct)
MTL_SIMD_REDUCE(simd_max, OpMax)
MTL_SIMD_REDUCE(simd_min, OpMin)
MTL_SIMD_REDUCE(simd_and, OpAnd)
MTL_SIMD_REDUCE(simd_or, OpOr)
MTL_SIMD_REDUCE(simd_xor, OpXor)
#undef MTL_SIMD_REDUCE

#define MTL_SIMD_PREFIX(name, Op, Inclusive)                                             \
  template <class T>                                                                     \
  inline T name(T x, mtl_site site = mtl_site::current()) {                              \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, 0, &mtl::prefix_fn<T, mtl::Op, Inclusive>, site);     \
    return r;                                                                            \
  }
MTL_SIMD_PREFIX(simd_prefix_inclusive_sum, OpSum, true)
MTL_SIMD_PREFIX(simd_prefix_exclusive_sum, OpSum, false)
MTL_SIMD_PREFIX(simd_prefix_inclusive_product, OpProduct, true)
MTL_SIMD_PREFIX(simd_prefix_exclusive_product, OpProduct, false)
#undef MTL_SIMD_PREFIX

#define MTL_SIMD_SHUFFLE(name, Kind)                                                     \
  template <class T>                                                                     \
  inline T name(T x, ushort arg, mtl_site site = mtl_site::current()) {                  \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, arg, &mtl::shuffle_fn<T, mtl::Kind>, site);           \
    return r;                                                                            \
  }
MTL_SIMD_SHUFFLE(simd_shuffle, kShuffle)
MTL_SIMD_SHUFFLE(simd_broadcast, kShuffle)
MTL_SIMD_SHUFFLE(simd_shuffle_down, kDown)
MTL_SIMD_SHUFFLE(simd_shuffle_up, kUp)
MTL_SIMD_SHUFFLE(simd_shuffle_xor, kXor)
MTL_SIMD_SHUFFLE(simd_shuffle_rotate_down, kRotateDown)
MTL_SIMD_SHUFFLE(simd_shuffle_rotate_up, kRotateUp)
#undef MTL_SIMD_SHUFFLE

template <class T>
inline T simd_broadcast_first(T x, mtl_site site = mtl_site::current()) {
  T r;
  mtl::collective("simd_broadcast_first", &x, &r, 0, &mtl::shuffle_fn<T, mtl::kBroadcastFirst>, site);
  return r;
}
inline bool simd_all(bool x, mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_all", &x, &r, 0, &mtl::bool_all_fn, site);
  return r;
}
inline bool simd_any(bool x, mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_any", &x, &r, 0, &mtl::bool_any_fn, site);
  return r;
}
inline bool simd_is_first(mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_is_first", nullptr, &r, 0, &mtl::is_first_fn, site);
  return r;
}

}  // namespace metal

using namespace metal;

// Kernel source follows this header (the emulator #undefs these after it): Metal's address-space qualifiers carry no
// meaning on a CPU. `threadgroup` variable declarations are rewritten to statics by the
// emulator before compiling (statics are shared by the fibers of the threadgroup that is
// running); what is left of the word is the address space of a pointer or reference.
#define device
#define constant
#define thread
#define threadgroup
#define MTL_TG_REGISTER(var)                                                    \
  static_assert(sizeof(var) > 0, "a threadgroup array of size zero: " #var); \
  ::mtl::tg_register(static_cast<void*>(&(var)), sizeof(var))
