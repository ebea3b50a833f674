// Host emulation of the CUDA C that graphc generates: the kernels compile as C++ for the CPU and run the grid
// as loops. Non-cooperative kernels run each thread to completion in turn. Cooperative kernels (shared memory,
// __syncthreads, warp shuffles) run every thread of a block as a fiber (ucontext) and switch fibers at each
// barrier, so a block's threads meet at __syncthreads and exchange values through shuffles as on a GPU
// (lock-step inside a warp is not modelled beyond the shuffles themselves: generated code never relies on it).
#pragma once
#define GRAPHC_EMULATE 1
#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <ucontext.h>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

static dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

namespace graphc_emul {
struct Fiber { ucontext_t ctx; bool done; dim3 tid; };
static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static std::vector<char> stacks;
static const size_t kStack = 128 * 1024;
static int current = -1;
static int nthreads = 0;
static bool cooperative = false;
static const std::function<void()>* body = nullptr;
static int block_arrived = 0, block_generation = 0;
static int warp_arrived[32], warp_generation[32];
static unsigned long long warp_slots[32][32];
static long long progress = 0;

static inline void yield() { swapcontext(&fibers[current].ctx, &scheduler); }

static inline int linear_tid() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }

static inline void need_fibers(const char* what) {
    if (!cooperative) {
        std::fprintf(stderr, "graphc emulation: %s in a kernel launched as non-cooperative\n", what);
        std::abort();
    }
}

static inline void block_barrier() {
    need_fibers("__syncthreads");
    const int gen = block_generation;
    ++progress;
    if (++block_arrived == nthreads) { block_arrived = 0; ++block_generation; return; }
    while (block_generation == gen) yield();
}

static inline void warp_barrier(int warp) {
    need_fibers("a warp shuffle");
    const int lanes = nthreads - warp * 32 < 32 ? nthreads - warp * 32 : 32;
    const int gen = warp_generation[warp];
    ++progress;
    if (++warp_arrived[warp] == lanes) { warp_arrived[warp] = 0; ++warp_generation[warp]; return; }
    while (warp_generation[warp] == gen) yield();
}

template <class T> static inline T shuffle(T v, int source_of_lane(int, int), int arg) {
    const int t = linear_tid(), warp = t / 32, lane = t % 32;
    std::memcpy(&warp_slots[warp][lane], &v, sizeof(T));
    warp_barrier(warp);
    const int src = source_of_lane(lane, arg);
    T r = v;
    if (src >= 0 && src < 32 && warp * 32 + src < nthreads) std::memcpy(&r, &warp_slots[warp][src], sizeof(T));
    warp_barrier(warp);
    return r;
}
static inline int xor_lane(int lane, int m) { return lane ^ m; }
static inline int down_lane(int lane, int d) { return lane + d < 32 ? lane + d : lane; }
static inline int up_lane(int lane, int d) { return lane - d >= 0 ? lane - d : lane; }
static inline int idx_lane(int, int s) { return s & 31; }

static void fiber_main() {
    (*body)();
    fibers[current].done = true;
}

static void run_block(const std::function<void()>& fn) {
    if (!cooperative) {
        for (unsigned z = 0; z < blockDim.z; ++z)
            for (unsigned y = 0; y < blockDim.y; ++y)
                for (unsigned x = 0; x < blockDim.x; ++x) { threadIdx = dim3{x, y, z}; fn(); }
        return;
    }
    body = &fn;
    fibers.assign(nthreads, Fiber{});
    if (stacks.size() < (size_t)nthreads * kStack) stacks.resize((size_t)nthreads * kStack);
    block_arrived = 0;
    std::memset(warp_arrived, 0, sizeof warp_arrived);
    int t = 0;
    for (unsigned z = 0; z < blockDim.z; ++z)
        for (unsigned y = 0; y < blockDim.y; ++y)
            for (unsigned x = 0; x < blockDim.x; ++x, ++t) {
                Fiber& f = fibers[t];
                f.done = false;
                f.tid = dim3{x, y, z};
                getcontext(&f.ctx);
                f.ctx.uc_stack.ss_sp = &stacks[(size_t)t * kStack];
                f.ctx.uc_stack.ss_size = kStack;
                f.ctx.uc_link = &scheduler;
                makecontext(&f.ctx, fiber_main, 0);
            }
    int remaining = nthreads;
    while (remaining > 0) {
        const long long before = progress;
        int finished = 0;
        for (int i = 0; i < nthreads; ++i) {
            if (fibers[i].done) continue;
            current = i;
            threadIdx = fibers[i].tid;
            swapcontext(&scheduler, &fibers[i].ctx);
            if (fibers[i].done) ++finished;
        }
        remaining -= finished;
        if (remaining > 0 && finished == 0 && progress == before) {
            std::fprintf(stderr, "graphc emulation: deadlock (threads wait at a barrier others never reach)\n");
            std::abort();
        }
    }
    current = -1;
}

static void launch(const unsigned* grid, const unsigned* block, int is_cooperative, const std::function<void()>& fn) {
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    nthreads = (int)(block[0] * block[1] * block[2]);
    cooperative = is_cooperative != 0;
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) { blockIdx = dim3{x, y, z}; run_block(fn); }
}
}  // namespace graphc_emul

static inline void __syncthreads() { graphc_emul::block_barrier(); }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int m) { return graphc_emul::shuffle(v, graphc_emul::xor_lane, m); }
template <class T> static inline T __shfl_down_sync(unsigned, T v, int d) { return graphc_emul::shuffle(v, graphc_emul::down_lane, d); }
template <class T> static inline T __shfl_up_sync(unsigned, T v, int d) { return graphc_emul::shuffle(v, graphc_emul::up_lane, d); }
template <class T> static inline T __shfl_sync(unsigned, T v, int s) { return graphc_emul::shuffle(v, graphc_emul::idx_lane, s); }
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
