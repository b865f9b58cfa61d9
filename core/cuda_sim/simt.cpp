// The simulated GPU's execution (RINGATTN_CUDA=SIM): a kernel launch is queued on its stream
// (core/cuda_sim/sim_streams.h); when it runs, it runs its blocks one after another on the thread
// that waited for it, and the threads of a block as fibers, switched only where CUDA
// threads wait for each other: __syncthreads and warp shuffles. On x86-64 a fiber switch is a few
// instructions of our own (ucontext's swapcontext makes a system call per switch, which made a
// launch of a million threads take seconds); elsewhere it is swapcontext. Between two waits a
// thread runs alone, so the order is deterministic: thread 0 first, up to its next wait, then
// thread 1, and so on; in every other block from the last thread to the first. Shared memory is
// all ones (NaN) when a block starts.
//
// What it checks as a GPU would not (a GPU hangs or computes garbage instead):
// - __syncthreads must be reached by every thread of the block: one reached while other threads
//   exited, or wait at a shuffle, is a std::logic_error naming the kernel's block and the counts;
// - a warp shuffle must be reached by all 32 lanes of the warp.
// Such an error is the device's sticky fault (the stream scheduler catches it): stderr says what
// it was, and synchronising calls return cudaErrorLaunchFailure, as a GPU's would.
// Launch configurations the driver refuses (more than 1024 threads, a grid too large in y or z,
// an empty grid) leave cudaErrorInvalidConfiguration as the last error and run nothing.
//
// For the tests of what the product does when the device faults mid-run: with
// RINGATTN_DEBUG_FAULTS=sim_fault_launch=N (core/debug_faults.h), the N-th kernel launch of the
// process (counted from 1; launches of our kernels, not cuBLAS calls or the fused attention's
// host-block body) faults when it runs, as a kernel's illegal address would on a GPU (reported as
// every fault here is: cudaErrorLaunchFailure, 719, where a GPU says cudaErrorIllegalAddress,
// 700), in the process of world rank sim_fault_rank (default 0; the rank is read from the
// launcher's environment: Open MPI, PMIx, PMI, then Slurm; 0 without a launcher). The variable is
// read when the program starts: a malformed one, or a launch below 1 or a rank below 0, ends it
// there with a message, so a typo cannot switch the fault off silently.
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_asan.h"
#include "core/cuda_sim/sim_streams.h"
#include "core/debug_faults.h"
#include "core/error.h"
#include "cuda_runtime.h"

#ifdef RINGATTN_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace ringattn::sim {

void set_last_error(cudaError_t e);  // core/cuda_sim/runtime.cpp

namespace {

// Fiber stacks: kernels keep small frames, but the sanitizers' redzones make them larger.
constexpr size_t kStackBytes = size_t(256) << 10;

enum class State { Ready, AtBarrier, AtShuffle, Done };

#if defined(__x86_64__)
// A suspended fiber is its stack pointer, with the callee-saved registers on its stack (the
// System V ABI's: nothing else survives a call). The x87 control word and MXCSR are callee-saved
// too, but no kernel changes rounding modes, and saving them cost more than the rest together.
struct Context {
  void* sp = nullptr;
};
extern "C" void ringattn_sim_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .p2align 4
  .globl ringattn_sim_switch
  .hidden ringattn_sim_switch
  .type ringattn_sim_switch, @function
ringattn_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ringattn_sim_switch, .-ringattn_sim_switch
  .popsection
)");
void switch_context(Context& from, Context& to) {
  ringattn_sim_switch(&from.sp, to.sp);
}
// A fresh fiber whose first switch "returns" into entry, with the stack aligned as after a call.
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto* sp =
      reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15));
#ifdef RINGATTN_SIM_ASAN
  // The slots below may hold the redzones of a frame the stack's last fiber never returned from.
  __asan_unpoison_memory_region(sp - 8, 8 * sizeof(uint64_t));
#endif
  *--sp = 0;                                  // entry never returns
  *--sp = reinterpret_cast<uint64_t>(entry);  // popped by ret: 16-byte aligned slot
  for (int i = 0; i < 6; ++i) *--sp = 0;      // rbp rbx r12 r13 r14 r15
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to) {
  swapcontext(&from.uc, &to.uc);
}
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

// A fiber's stack, with an inaccessible page below it: an overflow faults instead of writing
// over whatever memory lies there.
//
// Under AddressSanitizer its shadow is cleared when it is mapped and before it is unmapped: a
// fiber's outermost frames never return (fiber_main switches away), so their redzones stay
// poisoned, and munmap does not clear them. A later mapping at the same address (another host
// thread's block, whose fibers' stack tops lie elsewhere) would then meet them at its first write.
class FiberStack {
 public:
  FiberStack() = default;
  FiberStack(FiberStack&& o) noexcept : base_(std::exchange(o.base_, nullptr)) {}
  FiberStack& operator=(FiberStack&&) = delete;
  ~FiberStack() {
    if (!base_) return;
#ifdef RINGATTN_SIM_ASAN
    __asan_unpoison_memory_region(base_ + kGuardBytes, kStackBytes);
#endif
    munmap(base_, kGuardBytes + kStackBytes);
  }
  char* get() {
    if (!base_) {
      void* p = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      base_ = static_cast<char*>(p);
      mprotect(base_, kGuardBytes, PROT_NONE);
#ifdef RINGATTN_SIM_ASAN
      __asan_unpoison_memory_region(base_ + kGuardBytes, kStackBytes);
#endif
    }
    return base_ + kGuardBytes;
  }

 private:
  static constexpr size_t kGuardBytes = 4096;
  char* base_ = nullptr;
};

struct Fiber {
  Context context;
  State state = State::Ready;
  uint3 index;
  unsigned shuffles = 0;  // shuffles this thread has completed: pairs lanes' k-th exchanges
  FiberStack stack;
#ifdef RINGATTN_SIM_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Block {
  void (*thread)(const void*) = nullptr;
  const void* closure = nullptr;
  std::vector<Fiber> fibers;  // grown to the largest block seen, stacks reused
  int threads = 0;
  int current = -1;
  Context scheduler;
  // Shuffle slots, two generations (by a lane's shuffle count's parity): a lane that already
  // went on to its next exchange never overwrites a value another lane has yet to read.
  std::vector<uint64_t> slots;
  std::exception_ptr error;
  // Threads run from the last to the first between two waits (every other block, and the first
  // block in every other launch): a thread that reads another's write without a barrier in between
  // then sees it in one order and not in the other, and the blocks disagree.
  bool reverse = false;
#ifdef RINGATTN_SIM_ASAN
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_bytes = 0;
  void* scheduler_fake_stack = nullptr;
#endif
};

thread_local Block* running = nullptr;

Block& current_block(const char* what) {
  if (!running || running->current < 0)
    throw std::logic_error(std::string(what) + " called outside a simulated kernel");
  return *running;
}

// From a fiber back to the scheduler; `finished`: this fiber never resumes.
void to_scheduler(Block& b, bool finished) {
  Fiber& f = b.fibers[size_t(b.current)];
#ifdef RINGATTN_SIM_ASAN
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, b.scheduler_stack,
                                 b.scheduler_stack_bytes);
#else
  (void)finished;
#endif
  switch_context(f.context, b.scheduler);
#ifdef RINGATTN_SIM_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &b.scheduler_stack, &b.scheduler_stack_bytes);
#endif
}

void fiber_main() {
  Block& b = *running;
#ifdef RINGATTN_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_bytes);
#endif
  try {
    b.thread(b.closure);
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  b.fibers[size_t(b.current)].state = State::Done;
  to_scheduler(b, true);
}

void resume(Block& b, int t) {
  Fiber& f = b.fibers[size_t(t)];
  b.current = t;
  threadIdx = f.index;
#ifdef RINGATTN_SIM_ASAN
  __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, f.stack.get(), kStackBytes);
#endif
  switch_context(b.scheduler, f.context);
#ifdef RINGATTN_SIM_ASAN
  __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
  b.current = -1;
}

std::string describe(const Block& b) {
  int count[4] = {};  // by State
  for (int t = 0; t < b.threads; ++t) ++count[int(b.fibers[size_t(t)].state)];
  return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ") of " + std::to_string(b.threads) +
         " threads: " + std::to_string(count[int(State::AtBarrier)]) + " at __syncthreads, " +
         std::to_string(count[int(State::AtShuffle)]) + " at a warp shuffle, " +
         std::to_string(count[int(State::Done)]) + " exited";
}

// Releases the warps whose lanes all wait at a shuffle; true if any was.
bool release_shuffles(Block& b) {
  bool released = false;
  for (int w = 0; w * 32 < b.threads; ++w) {
    const int first = w * 32, last = std::min(b.threads, first + 32);
    int waiting = 0, exited = 0;
    for (int t = first; t < last; ++t) {
      waiting += b.fibers[size_t(t)].state == State::AtShuffle;
      exited += b.fibers[size_t(t)].state == State::Done;
    }
    if (waiting == 0) continue;
    if (exited > 0)
      throw std::logic_error("simulated kernel: a warp shuffle that " + std::to_string(exited) +
                             " lanes of warp " + std::to_string(w) + " exited before; " +
                             describe(b));
    if (waiting == last - first) {
      for (int t = first; t < last; ++t) b.fibers[size_t(t)].state = State::Ready;
      released = true;
    }
  }
  return released;
}

// A block that ends in an error leaves its unfinished threads' frames on their stacks; under ASan
// their redzones would stay poisoned for the next kernel this host thread runs on those stacks.
void abandon(Block& b) {
#ifdef RINGATTN_SIM_ASAN
  for (int t = 0; t < b.threads; ++t) {
    Fiber& f = b.fibers[size_t(t)];
    if (f.state != State::Done) __asan_unpoison_memory_region(f.stack.get(), kStackBytes);
  }
#else
  (void)b;
#endif
}

void run_block(Block& b) {
  const int n = b.threads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = b.fibers[size_t(t)];
    f.state = State::Ready;
    f.shuffles = 0;
    f.index = uint3{unsigned(t) % blockDim.x, unsigned(t) / blockDim.x % blockDim.y,
                    unsigned(t) / (blockDim.x * blockDim.y)};
    // Stack tops 1088 bytes apart modulo 4 KiB: equal offsets would put every fiber's frames in
    // the same L1 cache sets, and each switch would miss.
    make_context(f.context, f.stack.get(), kStackBytes - size_t(t % 64) * 1088 % 4096, &fiber_main);
  }
  for (;;) {
    // One pass: run every ready thread up to its next wait, and count where they all are.
    int barrier = 0, shuffle = 0, done = 0;
    for (int i = 0; i < n; ++i) {
      const int t = b.reverse ? n - 1 - i : i;
      const Fiber& f = b.fibers[size_t(t)];
      if (f.state == State::Ready) resume(b, t);
      barrier += f.state == State::AtBarrier;
      shuffle += f.state == State::AtShuffle;
      done += f.state == State::Done;
    }
    if (b.error) std::rethrow_exception(b.error);
    if (shuffle > 0 && release_shuffles(b)) continue;
    if (done == n) return;
    if (barrier == n) {
      for (int t = 0; t < n; ++t) b.fibers[size_t(t)].state = State::Ready;
      continue;
    }
    throw std::logic_error("simulated kernel: __syncthreads not reached by every thread; " +
                           describe(b));
  }
}

// The kernels' __shared__ arrays (core/cuda_sim/include/cuda_runtime.h puts them in this section;
// the linker names its bounds).
extern "C" char __start_ringattn_sim_shared[] __attribute__((weak));
extern "C" char __stop_ringattn_sim_shared[] __attribute__((weak));
void poison_shared_memory() {
  if (__start_ringattn_sim_shared && __stop_ringattn_sim_shared)
    std::memset(__start_ringattn_sim_shared, 0xff,
                size_t(__stop_ringattn_sim_shared - __start_ringattn_sim_shared));
}

std::mutex& launch_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

void block_barrier() {
  Block& b = current_block("__syncthreads");
  b.fibers[size_t(b.current)].state = State::AtBarrier;
  to_scheduler(b, false);
}

uint64_t warp_exchange(uint64_t v, int lane_mask, int width) {
  Block& b = current_block("__shfl_xor_sync");
  const int t = b.current;
  Fiber& f = b.fibers[size_t(t)];
  const size_t generation = size_t(f.shuffles & 1u) * size_t(b.threads);
  b.slots[generation + size_t(t)] = v;
  f.state = State::AtShuffle;
  to_scheduler(b, false);
  ++b.fibers[size_t(t)].shuffles;
  const int lane = t & 31;
  const int from = (t & ~31) + ((lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1)));
  if (from >= b.threads)
    throw std::logic_error("simulated kernel: shuffle from lane " + std::to_string(from & 31) +
                           " of a warp cut short by the block size");
  return b.slots[generation + size_t(from)];
}

namespace {

// Runs a launch: every block in turn, the threads of each as fibers.
void execute_kernel(dim3 grid, dim3 block, void (*thread)(const void*), const void* closure) {
  if (running)  // a kernel cannot launch one (the launch lock and the block are taken)
    throw std::logic_error("simulated kernel: a kernel launch from inside a kernel");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const std::lock_guard<std::mutex> lock(launch_mutex());
  static unsigned launches = 0;
  const unsigned launch = launches++;
  thread_local Block b;
  b.thread = thread;
  b.closure = closure;
  b.threads = int(threads);
  if (b.fibers.size() < threads) b.fibers.resize(threads);
  b.slots.assign(2 * threads, 0);
  b.error = nullptr;
  running = &b;
  gridDim = grid;
  blockDim = block;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          b.reverse = ((x + y + z + launch) & 1u) != 0;
          poison_shared_memory();
          run_block(b);
        }
  } catch (...) {
    abandon(b);
    running = nullptr;
    throw;
  }
  running = nullptr;
}

// The launch number sim_fault_launch names for this process, or 0 for none.
uint64_t injected_fault_launch() {
  static const uint64_t at = [] {
    try {
      const int64_t n = debug_fault("sim_fault_launch", -1);
      const int64_t want = debug_fault("sim_fault_rank", 0);
      if (n == -1) return uint64_t(0);  // absent
      RA_CHECK(n >= 1, "RINGATTN_DEBUG_FAULTS: sim_fault_launch={} must be at least 1", n);
      RA_CHECK(want >= 0, "RINGATTN_DEBUG_FAULTS: sim_fault_rank={} must be at least 0", want);
      const char* rank = nullptr;
      for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
        if ((rank = std::getenv(var))) break;
      if ((rank ? std::strtoll(rank, nullptr, 10) : 0) != want) return uint64_t(0);
      return uint64_t(n);
    } catch (const std::exception& e) {  // before main: no caller to take an Error
      std::fprintf(stderr, "[cuda sim] %s\n", e.what());
      std::fflush(stderr);
      std::_Exit(2);
    }
  }();
  return at;
}

// Read when the program starts, so a typo ends even a run that launches nothing.
[[maybe_unused]] const uint64_t fault_launch_read_at_start = injected_fault_launch();

}  // namespace

void run_kernel(dim3 grid, dim3 block, size_t /*dynamic_smem*/, cudaStream_t stream,
                void (*thread)(const void*), std::shared_ptr<const void> closure) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr,
                 "[cuda sim] launch refused: grid (%u, %u, %u), block (%u, %u, %u) threads\n",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    set_last_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (running)  // a kernel cannot launch one (the launch lock and the block are taken)
    throw std::logic_error("simulated kernel: a kernel launch from inside a kernel");
  static std::atomic<uint64_t> launches{0};
  if (const uint64_t at = injected_fault_launch(); at && ++launches == at) {
    enqueue(stream, "kernel", [at] {
      throw std::runtime_error(
          "an illegal memory access (injected: sim_fault_launch=" + std::to_string(at) + ")");
    });
    return;
  }
  enqueue(stream, "kernel", [grid, block, thread, closure = std::move(closure)] {
    execute_kernel(grid, block, thread, closure.get());
  });
}

}  // namespace ringattn::sim
