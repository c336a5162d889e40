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

#include "metal_types.h"
#include "mtl_dispatch.h"
#include "mtl_simd.h"
#include "mtl_threads.h"

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
