// The host emulation's CUDA runtime: the cudart entry points the CUDA backend calls, the stream
// queue, the memory registry, and the kernel scheduler (fibers for blocks that use __syncthreads).
// See emu.h for what the emulation checks and what it cannot.  Tests only; never shipped.
#include <ucontext.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "kernel.h"
#include "emu.h"

namespace nysact_emu {
namespace {

// ---- Errors ------------------------------------------------------------------------------------

std::mutex errorMutex;
cudaError_t stickyError = cudaSuccess;
thread_local cudaError_t lastError = cudaSuccess;

// ---- Memory registry ---------------------------------------------------------------------------

struct Block {
  size_t bytes;
  bool pinned;
};
std::mutex memoryMutex;
std::map<uintptr_t, Block> blocks;  // by start address

void* registerBlock(size_t bytes, bool pinned) {
  const size_t alignment = pinned ? 4096 : 256;  // cudaMalloc guarantees 256 bytes
  const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) return nullptr;
  // Fresh device memory holds whatever was there: NaN bytes, so code that reads memory it never
  // wrote shows it.
  std::memset(p, 0xff, rounded);
  std::lock_guard<std::mutex> lock(memoryMutex);
  blocks[reinterpret_cast<uintptr_t>(p)] = Block{bytes, pinned};
  return p;
}

bool unregisterBlock(void* p, bool pinned) {
  {
    std::lock_guard<std::mutex> lock(memoryMutex);
    auto it = blocks.find(reinterpret_cast<uintptr_t>(p));
    if (it == blocks.end() || it->second.pinned != pinned) return false;
    blocks.erase(it);
  }
  std::free(p);
  return true;
}

// ---- The queue ---------------------------------------------------------------------------------

std::mutex queueMutex;
std::deque<std::function<void()>> queue;
std::mutex drainMutex;  // one host thread runs queued work at a time, in order

// ---- Streams and events ------------------------------------------------------------------------

struct Stream {
  unsigned int flags;
};
struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};

cudaError_t fail(cudaError_t error) {
  lastError = error;
  return error;
}

// The sticky error if there is one (returned by every call once the "device" faulted).
#define NYSACT_EMU_STICKY()                              \
  do {                                                   \
    const cudaError_t nysactSticky_ = ::nysact_emu::sticky(); \
    if (nysactSticky_ != cudaSuccess) return nysactSticky_; \
  } while (0)

const char* kindName(Memory m) {
  switch (m) {
    case Memory::Device: return "device memory";
    case Memory::PinnedHost: return "page-locked host memory";
    default: return "pageable host memory (or outside any allocation)";
  }
}

std::string describe(const void* p, size_t bytes) {
  std::ostringstream s;
  s << "[" << p << ", +" << bytes << " bytes)";
  return s.str();
}

// ---- Copies ------------------------------------------------------------------------------------

// Checks a copy's two sides against `kind`; on a mismatch reports a fault and returns false.
bool checkCopy(const char* call, void* dst, const void* src, size_t dstBytes, size_t srcBytes, cudaMemcpyKind kind,
               Memory& dstMemory, Memory& srcMemory) {
  dstMemory = classify(dst, dstBytes);
  srcMemory = classify(src, srcBytes);
  const bool dstDevice = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool srcDevice = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  std::ostringstream s;
  if (dstDevice && dstMemory != Memory::Device) {
    s << call << ": destination " << describe(dst, dstBytes) << " is " << kindName(dstMemory) << ", the kind says device";
  } else if (srcDevice && srcMemory != Memory::Device) {
    s << call << ": source " << describe(src, srcBytes) << " is " << kindName(srcMemory) << ", the kind says device";
  } else if ((kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost) && dstMemory == Memory::Device) {
    s << call << ": destination " << describe(dst, dstBytes) << " is device memory, the kind says host";
  } else if ((kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost) && srcMemory == Memory::Device) {
    s << call << ": source " << describe(src, srcBytes) << " is device memory, the kind says host";
  } else {
    return true;
  }
  fault(s.str());
  return false;
}

// One (possibly pitched) copy in stream order.  Pageable sources are read at the call (CUDA stages
// them before returning); pageable destinations are written before the call returns (CUDA returns
// from a copy to pageable memory only once it is done), after everything queued before it.
cudaError_t copy(const char* call, void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                 size_t height, cudaMemcpyKind kind, cudaStream_t stream, bool synchronous) {
  NYSACT_EMU_STICKY();
  if (width == 0 || height == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr || dpitch < width || spitch < width) return fail(cudaErrorInvalidValue);
  if (kind != cudaMemcpyHostToHost && kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost &&
      kind != cudaMemcpyDeviceToDevice && kind != cudaMemcpyDefault)
    return fail(cudaErrorInvalidMemcpyDirection);
  const size_t dstBytes = (height - 1) * dpitch + width, srcBytes = (height - 1) * spitch + width;
  Memory dstMemory, srcMemory;
  if (!checkCopy(call, dst, src, dstBytes, srcBytes, kind, dstMemory, srcMemory)) return cudaSuccess;
  auto run = [=](const char* from) {
    auto* d = static_cast<char*>(dst);
    for (size_t r = 0; r < height; ++r) std::memmove(d + r * dpitch, from + r * spitch, width);
  };
  if (synchronous || dstMemory == Memory::Other) {
    const cudaError_t status = drain();
    if (status != cudaSuccess) return status;
    run(static_cast<const char*>(src));
    return cudaSuccess;
  }
  if (srcMemory == Memory::Other) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + srcBytes);
    enqueue(stream, [run, staged] { run(staged->data()); });
  } else {
    enqueue(stream, [run, src] { run(static_cast<const char*>(src)); });
  }
  return cudaSuccess;
}

// ---- Kernels: blocks, threads and fibers -------------------------------------------------------

constexpr size_t kFiberStack = size_t{256} << 10;

struct Fiber {
  ucontext_t context{};
  std::unique_ptr<char[]> stack;
  ThreadCoordinates coordinates{};
  bool finished = false;
  bool atBarrier = false;
};

struct BlockRun {
  explicit BlockRun(std::vector<Fiber>& pool) : fibers(pool) {}
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  ucontext_t scheduler{};
  std::vector<Fiber>& fibers;  // this host thread's pool: stacks are kept from launch to launch
  Fiber* running = nullptr;
  bool fiberMode = false;  // false: thread 0 alone on a fiber, or the others run directly
  bool direct = false;     // a thread is running on the scheduler's own stack
};

thread_local BlockRun* block = nullptr;
thread_local Fiber* starting = nullptr;

void fiberEntry() {
  Fiber* self = starting;
  current = &self->coordinates;
  block->body(block->arg);
  self->finished = true;
  swapcontext(&self->context, &block->scheduler);
}

void startFiber(BlockRun& run, Fiber& f) {
  if (!f.stack) f.stack.reset(new char[kFiberStack]);
  f.finished = false;
  f.atBarrier = false;
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack.get();
  f.context.uc_stack.ss_size = kFiberStack;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiberEntry, 0);
  starting = &f;
  run.running = &f;
  swapcontext(&run.scheduler, &f.context);
}

void resumeFiber(BlockRun& run, Fiber& f) {
  f.atBarrier = false;
  current = &f.coordinates;
  run.running = &f;
  swapcontext(&run.scheduler, &f.context);
}

ThreadCoordinates coordinatesOf(dim3 grid, dim3 blockDim, uint3 b, unsigned int linear) {
  ThreadCoordinates c;
  c.blockIdx = b;
  c.blockDim = blockDim;
  c.gridDim = grid;
  c.threadIdx.x = linear % blockDim.x;
  c.threadIdx.y = (linear / blockDim.x) % blockDim.y;
  c.threadIdx.z = linear / (blockDim.x * blockDim.y);
  return c;
}

// The order blocks, and threads within a block, run in: shuffled per launch (a GPU promises no
// order, so code that depends on one — two threads writing one element, a block reading what
// another wrote — gives different bits from run to run, which the bit-identity checks catch).
// NYSACT_CUDA_EMU_ORDER=ordered runs everything in index order (for debugging).
struct Shuffle {
  uint64_t state;
  explicit Shuffle(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  template <typename T>
  void apply(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(next() % i)]);
  }
};
bool orderedRuns() {
  const char* v = std::getenv("NYSACT_CUDA_EMU_ORDER");
  return v != nullptr && std::strcmp(v, "ordered") == 0;
}
std::atomic<uint64_t> launchCount{0};

void runBlock(BlockRun& run, dim3 grid, dim3 blockDim, uint3 b, Shuffle* shuffle) {
  const unsigned int threads = blockDim.x * blockDim.y * blockDim.z;
  if (run.fibers.size() < threads) run.fibers.resize(threads);
  run.fiberMode = false;
  // Thread 0 on a fiber: does this block use __syncthreads?
  run.fibers[0].coordinates = coordinatesOf(grid, blockDim, b, 0);
  startFiber(run, run.fibers[0]);
  if (run.fibers[0].finished) {
    // No barrier: every other thread runs to completion in turn.
    run.direct = true;
    std::vector<unsigned int> order(threads > 0 ? threads - 1 : 0);
    for (unsigned int t = 1; t < threads; ++t) order[t - 1] = t;
    if (shuffle != nullptr) shuffle->apply(order);
    for (unsigned int t : order) {
      ThreadCoordinates c = coordinatesOf(grid, blockDim, b, t);
      current = &c;
      run.body(run.arg);
    }
    run.direct = false;
    return;
  }
  // A barrier: all threads on fibers, each run up to its next barrier in turn.
  run.fiberMode = true;
  std::vector<unsigned int> order(threads);
  for (unsigned int t = 0; t < threads; ++t) order[t] = t;
  if (shuffle != nullptr) shuffle->apply(order);
  for (unsigned int t : order) {
    if (t == 0) continue;  // already at its first barrier
    run.fibers[t].coordinates = coordinatesOf(grid, blockDim, b, t);
    startFiber(run, run.fibers[t]);
  }
  for (;;) {
    unsigned int finished = 0, waiting = 0;
    for (unsigned int t = 0; t < threads; ++t) {
      if (run.fibers[t].finished) ++finished;
      else if (run.fibers[t].atBarrier) ++waiting;
    }
    if (finished == threads) break;
    if (finished != 0) {
      // Some threads left the kernel while others wait at a barrier: undefined on a GPU (and a
      // hang on some).  Report it and let the waiting threads go on, so the run ends.
      std::ostringstream s;
      s << "__syncthreads reached by " << waiting << " of " << threads << " threads of block (" << b.x << ","
        << b.y << "," << b.z << ") while " << finished << " have returned (divergent barrier)";
      fault(s.str());
    }
    if (shuffle != nullptr) shuffle->apply(order);
    for (unsigned int t : order)
      if (!run.fibers[t].finished) resumeFiber(run, run.fibers[t]);
  }
  run.fiberMode = false;
}

}  // namespace

thread_local ThreadCoordinates* current = nullptr;

void syncthreads() {
  BlockRun* run = block;
  if (run == nullptr || run->direct) {
    // Thread 0 returned without a barrier, so the block runs without fibers; a later thread that
    // waits at one means the barrier is in divergent code.
    fault("__syncthreads reached by a thread after thread 0 of its block returned without one (divergent barrier)");
    return;
  }
  Fiber* self = run->running;
  self->atBarrier = true;
  swapcontext(&self->context, &run->scheduler);
}

bool validLaunch(dim3 grid, dim3 blk) {
  const unsigned long long threads = static_cast<unsigned long long>(blk.x) * blk.y * blk.z;
  return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535 &&
         blk.x >= 1 && blk.y >= 1 && blk.z >= 1 && blk.x <= 1024 && blk.y <= 1024 && blk.z <= 64 && threads <= 1024;
}

void runGrid(dim3 grid, dim3 blk, void (*body)(void*), void* arg) {
  thread_local std::vector<Fiber> pool;
  BlockRun run(pool);
  run.body = body;
  run.arg = arg;
  BlockRun* outer = block;
  ThreadCoordinates* outerCurrent = current;
  block = &run;
  Shuffle shuffle(launchCount.fetch_add(1));
  Shuffle* order = orderedRuns() ? nullptr : &shuffle;
  std::vector<uint3> blocks;
  blocks.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned int z = 0; z < grid.z; ++z)
    for (unsigned int y = 0; y < grid.y; ++y)
      for (unsigned int x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
  if (order != nullptr) order->apply(blocks);
  for (const uint3& b : blocks) {
    if (sticky() != cudaSuccess) break;
    runBlock(run, grid, blk, b, order);
  }
  block = outer;
  current = outerCurrent;
}

// ---- Queue, memory and errors (emu.h) ----------------------------------------------------------

void enqueue(cudaStream_t, std::function<void()> op) {
  std::lock_guard<std::mutex> lock(queueMutex);
  queue.push_back(std::move(op));
}

cudaError_t drain() {
  std::lock_guard<std::mutex> running(drainMutex);
  for (;;) {
    std::function<void()> op;
    {
      std::lock_guard<std::mutex> lock(queueMutex);
      if (queue.empty()) break;
      op = std::move(queue.front());
      queue.pop_front();
    }
    if (sticky() == cudaSuccess) op();  // after a fault the rest of the queue is dropped, as on a GPU
  }
  return sticky();
}

Memory classify(const void* p, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(memoryMutex);
  auto it = blocks.upper_bound(a);
  if (it == blocks.begin()) return Memory::Other;
  --it;
  if (a + bytes > it->first + it->second.bytes) return Memory::Other;
  return it->second.pinned ? Memory::PinnedHost : Memory::Device;
}

void fault(const std::string& what) {
  std::fprintf(stderr, "nysact CUDA emulation: device fault: %s\n", what.c_str());
  std::fflush(stderr);
  std::lock_guard<std::mutex> lock(errorMutex);
  if (stickyError == cudaSuccess) stickyError = cudaErrorIllegalAddress;
}

cudaError_t sticky() {
  std::lock_guard<std::mutex> lock(errorMutex);
  return stickyError;
}

void setLastError(cudaError_t error) { lastError = error; }

namespace {

std::mutex faultMutex;
std::string faultSpec;                    // the NYSACT_CUDA_EMU_FAULTS value the counts belong to
std::map<std::string, long> faultCounts;  // remaining failures; -1: every call
size_t faultMallocLimit = SIZE_MAX;

// Re-reads the variable; a changed value restarts the counts.  Caller holds faultMutex.
void refreshFaults() {
  const char* v = std::getenv("NYSACT_CUDA_EMU_FAULTS");
  const std::string spec = v != nullptr ? v : "";
  if (spec == faultSpec) return;
  faultSpec = spec;
  faultCounts.clear();
  faultMallocLimit = SIZE_MAX;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(start, end - start);
    if (item.rfind("malloc>", 0) == 0) {
      faultMallocLimit = static_cast<size_t>(std::strtoull(item.c_str() + 7, nullptr, 10));
    } else if (!item.empty()) {
      const size_t colon = item.find(':');
      if (colon == std::string::npos) {
        faultCounts[item] = -1;
      } else {
        faultCounts[item.substr(0, colon)] = std::strtol(item.c_str() + colon + 1, nullptr, 10);
      }
    }
    start = end + 1;
  }
}

}  // namespace

bool injectFault(const char* name) {
  std::lock_guard<std::mutex> lock(faultMutex);
  refreshFaults();
  auto it = faultCounts.find(name);
  if (it == faultCounts.end() || it->second == 0) return false;
  if (it->second > 0) --it->second;
  return true;
}

size_t mallocLimit() {
  std::lock_guard<std::mutex> lock(faultMutex);
  refreshFaults();
  return faultMallocLimit;
}

}  // namespace nysact_emu

// ---- The cudart entry points -------------------------------------------------------------------

using nysact_emu::Memory;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t s = nysact_emu::sticky();
  if (s != cudaSuccess) return s;
  const cudaError_t e = nysact_emu::lastError;
  nysact_emu::lastError = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  const cudaError_t s = nysact_emu::sticky();
  return s != cudaSuccess ? s : nysact_emu::lastError;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered (host emulation: see the fault printed above)";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  NYSACT_EMU_STICKY();
  return device == 0 ? cudaSuccess : nysact_emu::fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  if (device != 0) return nysact_emu::fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "nysact host emulation (not a GPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = size_t{16} << 30;
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->sharedMemPerBlock = 48 << 10;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->unifiedAddressing = 1;
  prop->l2CacheSize = 50 << 20;  // an H100's / H200's
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  NYSACT_EMU_STICKY();
  if (ptr == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (bytes > nysact_emu::mallocLimit()) return nysact_emu::fail(cudaErrorMemoryAllocation);  // injected
  void* p = nysact_emu::registerBlock(bytes, false);
  if (p == nullptr) return nysact_emu::fail(cudaErrorMemoryAllocation);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  // cudaFree synchronises the device first.
  const cudaError_t s = nysact_emu::drain();
  if (ptr == nullptr) return s;
  if (!nysact_emu::unregisterBlock(ptr, false)) return nysact_emu::fail(cudaErrorInvalidValue);
  return s;
}

cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  NYSACT_EMU_STICKY();
  if (ptr == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  void* p = nysact_emu::registerBlock(bytes, true);
  if (p == nullptr) return nysact_emu::fail(cudaErrorMemoryAllocation);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  const cudaError_t s = nysact_emu::drain();
  if (ptr == nullptr) return s;
  if (!nysact_emu::unregisterBlock(ptr, true)) return nysact_emu::fail(cudaErrorInvalidValue);
  return s;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  return nysact_emu::copy("cudaMemcpyAsync", dst, count, src, count, count, 1, kind, stream, false);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return nysact_emu::copy("cudaMemcpy", dst, count, src, count, count, 1, kind, nullptr, true);
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  return nysact_emu::copy("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, stream, false);
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  NYSACT_EMU_STICKY();
  if (count == 0) return cudaSuccess;
  if (nysact_emu::classify(dst, count) != Memory::Device) {
    nysact_emu::fault("cudaMemsetAsync: " + nysact_emu::describe(dst, count) + " is not inside one device allocation");
    return cudaSuccess;
  }
  nysact_emu::enqueue(stream, [dst, value, count] { std::memset(dst, value, count); });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  const cudaError_t s = cudaMemsetAsync(dst, value, count, nullptr);
  if (s != cudaSuccess) return s;
  return nysact_emu::drain();
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  NYSACT_EMU_STICKY();
  if (stream == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *stream = reinterpret_cast<cudaStream_t>(new nysact_emu::Stream{flags});
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  const cudaError_t s = nysact_emu::drain();
  if (stream == nullptr) return nysact_emu::fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<nysact_emu::Stream*>(stream);
  return s;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return nysact_emu::drain(); }

cudaError_t cudaDeviceSynchronize(void) { return nysact_emu::drain(); }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  NYSACT_EMU_STICKY();
  if (event == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  *event = reinterpret_cast<cudaEvent_t>(new nysact_emu::Event());
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == nullptr) return nysact_emu::fail(cudaErrorInvalidResourceHandle);
  (void)nysact_emu::drain();
  delete reinterpret_cast<nysact_emu::Event*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  NYSACT_EMU_STICKY();
  if (event == nullptr) return nysact_emu::fail(cudaErrorInvalidResourceHandle);
  auto* e = reinterpret_cast<nysact_emu::Event*>(event);
  e->recorded = false;
  nysact_emu::enqueue(stream, [e] {
    e->at = std::chrono::steady_clock::now();
    e->recorded = true;
  });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return nysact_emu::fail(cudaErrorInvalidResourceHandle);
  return nysact_emu::drain();
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  NYSACT_EMU_STICKY();
  if (ms == nullptr || start == nullptr || end == nullptr) return nysact_emu::fail(cudaErrorInvalidValue);
  auto* a = reinterpret_cast<nysact_emu::Event*>(start);
  auto* b = reinterpret_cast<nysact_emu::Event*>(end);
  if (!a->recorded || !b->recorded) return nysact_emu::fail(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}

}  // extern "C"
