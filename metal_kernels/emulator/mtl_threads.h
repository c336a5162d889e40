// Threads of the emulated GPU: their attribute values, fibers (one stack per thread) and
// the synchronization points that hand control back to the scheduler.
#pragma once

#include <source_location>
#include <stdarg.h>
#include <stdio.h>

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

}  // namespace mtl
