// The simulated GPU's streams and events (RINGATTN_CUDA=SIM): work is queued and runs as late as
// CUDA allows (core/cuda_sim/sim_streams.h says why and when).
//
// A stream is a queue of items, each either work or a wait: "first run stream T up to its n-th
// item" (cudaStreamWaitEvent, and the legacy default stream's implicit ordering). An event is a
// (stream, item count) pair taken when it is recorded. Running a stream up to a point runs its
// items in order, each wait first running what it names. A wait only ever names items queued
// before it, so this cannot cycle. One lock (recursive: running an item may queue a wait's work)
// covers every queue; work runs under it, on whichever host thread waited, one item at a time,
// as the launches were already serialised.
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_streams.h"

struct CUstream_st {
  struct Item {
    std::function<void()> work;  // empty for a wait
    const char* what = "";
    bool release = false;          // a free: runs after a fault too
    CUstream_st* after = nullptr;  // a wait: run `after` up to `point` first
    uint64_t point = 0;
  };
  unsigned flags = 0;
  std::deque<Item> queue;
  uint64_t queued = 0;  // items ever queued
  uint64_t done = 0;    // items run (or dropped after a fault)
};

struct CUevent_st {
  unsigned flags = 0;
  CUstream_st* stream = nullptr;  // null: never recorded (complete)
  uint64_t point = 0;
  bool answered_not_ready = false;
  std::thread::id recorder;  // the thread that recorded it
};

namespace ringattn::sim {

void set_last_error(cudaError_t e);  // core/cuda_sim/runtime.cpp

namespace {

struct Streams {
  std::recursive_mutex mu;
  CUstream_st legacy;
  // Every stream made, destroyed ones included: their queued work still runs, and a wait queued
  // on another stream may still name one.
  std::vector<CUstream_st*> all{&legacy};
  cudaError_t fault = cudaSuccess;
  std::string fault_message;
};

// Never destroyed: streams may be used during static destruction.
Streams& streams() {
  static auto* s = new Streams;
  return *s;
}

CUstream_st* resolve(cudaStream_t s) {
  return s ? s : &streams().legacy;
}

void record_fault(const char* what, const std::string& why) {
  Streams& st = streams();
  if (st.fault != cudaSuccess) return;
  st.fault = cudaErrorLaunchFailure;
  st.fault_message = std::string(what) + ": " + why;
  std::fprintf(stderr,
               "[cuda sim] device fault in queued work: %s (the device is unusable from here, as "
               "after a fault on a GPU)\n",
               st.fault_message.c_str());
}

// Runs s's items until `point` of them have run; the caller holds the lock.
void run_until(CUstream_st* s, uint64_t point) {
  Streams& st = streams();
  while (s->done < point && !s->queue.empty()) {
    CUstream_st::Item item = std::move(s->queue.front());
    s->queue.pop_front();
    if (item.after) run_until(item.after, item.point);
    if (item.work && (item.release || st.fault == cudaSuccess)) {
      try {
        item.work();
      } catch (const std::exception& e) {
        record_fault(item.what, e.what());
      } catch (...) {
        record_fault(item.what, "an exception that is not a std::exception");
      }
    }
    ++s->done;
  }
}

void push(CUstream_st* s, CUstream_st::Item item) {
  s->queue.push_back(std::move(item));
  ++s->queued;
}

// The legacy default stream's implicit ordering: its work waits for every blocking stream's work
// queued before it, and a blocking stream's work for the legacy stream's (non-blocking streams,
// such as the CUDA backend's, take part in neither).
void order_against_legacy(CUstream_st* s) {
  Streams& st = streams();
  const auto wait_for = [&](CUstream_st* other) {
    if (other != s && other->queued > other->done)
      push(s, CUstream_st::Item{{}, "implicit wait", false, other, other->queued});
  };
  if (s == &st.legacy) {
    for (CUstream_st* other : st.all)
      if ((other->flags & cudaStreamNonBlocking) == 0) wait_for(other);
  } else if ((s->flags & cudaStreamNonBlocking) == 0) {
    wait_for(&st.legacy);
  }
}

void queue_item(cudaStream_t stream, const char* what, std::function<void()> work, bool release) {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  order_against_legacy(s);
  push(s, CUstream_st::Item{std::move(work), what, release, nullptr, 0});
  // A GPU runs ahead of the host as well: the oldest half goes once the queue is full.
  if (s->queue.size() > kMaxQueued) run_until(s, s->done + kMaxQueued / 2);
}

}  // namespace

void enqueue(cudaStream_t s, const char* what, std::function<void()> work) {
  queue_item(s, what, std::move(work), false);
}
void enqueue_release(cudaStream_t s, std::function<void()> release) {
  queue_item(s, "free", std::move(release), true);
}

void run_stream(cudaStream_t stream) {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  // What the caller does next on the stream (a copy to the host, an NCCL call) comes after the
  // work it is ordered after implicitly: the legacy stream's, or the blocking streams'.
  order_against_legacy(s);
  run_until(s, s->queued);
}

void run_device() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  // Running one stream may not run another's later items; loop until every queue is empty.
  for (bool again = true; again;) {
    again = false;
    for (size_t i = 0; i < st.all.size(); ++i) {
      CUstream_st* s = st.all[i];
      if (s->queued > s->done) {
        run_until(s, s->queued);
        again = true;
      }
    }
  }
}

cudaError_t device_fault() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  return st.fault;
}

std::string device_fault_message() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  return st.fault_message;
}

void clear_device_fault() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  st.fault = cudaSuccess;
  st.fault_message.clear();
}

size_t queued_work() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  size_t n = 0;
  for (const CUstream_st* s : st.all) n += s->queue.size();
  return n;
}

}  // namespace ringattn::sim

using namespace ringattn::sim;

namespace {

cudaError_t null_handle(const char* what) {
  std::fprintf(stderr, "[cuda sim] %s\n", what);
  set_last_error(cudaErrorInvalidResourceHandle);
  return cudaErrorInvalidResourceHandle;
}

}  // namespace

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!s) return null_handle("stream create without a result pointer");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  *s = new CUstream_st;
  (*s)->flags = flags;
  st.all.push_back(*s);
  return cudaSuccess;
}
// cudaStreamDestroy returns at once; work still queued runs later, as CUDA runs it before it
// releases the stream (here: when something waits for it, or the device is synchronised). The
// stream itself is kept: its queue, and waits queued elsewhere, may still name it.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return null_handle("destroy of the null stream");
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  run_stream(s);
  return device_fault();
}
cudaError_t cudaStreamGetDevice(cudaStream_t, int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  run_device();
  return device_fault();
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  return cudaEventCreateWithFlags(e, cudaEventDefault);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (!e) return null_handle("event create without a result pointer");
  *e = new CUevent_st;
  (*e)->flags = flags;
  return cudaSuccess;
}
// A wait already queued holds the stream and point it took, not the event.
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
  if (!e) return null_handle("record of a null event");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  order_against_legacy(s);
  e->stream = s;
  e->point = s->queued;
  e->answered_not_ready = false;
  e->recorder = std::this_thread::get_id();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t e, unsigned) {
  if (!e) return null_handle("wait on a null event");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  if (e->stream && e->stream != s && e->stream->done < e->point)
    push(s, CUstream_st::Item{{}, "event wait", false, e->stream, e->point});
  return cudaSuccess;
}
// A pending event answers "not ready" once, as a busy GPU would; asked again by the thread that
// recorded it, its work runs, so code polling it makes progress. Other threads (the watchdog's)
// only ever see it pending until someone runs it: their polling must not decide when work runs.
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!e) return null_handle("query of a null event");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  if (e->stream && e->stream->done < e->point) {
    const bool recorder = std::this_thread::get_id() == e->recorder;
    if (!recorder || !e->answered_not_ready) {
      if (recorder) e->answered_not_ready = true;
      set_last_error(cudaErrorNotReady);
      return cudaErrorNotReady;
    }
    run_until(e->stream, e->point);
  }
  return st.fault;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return null_handle("synchronize of a null event");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  if (e->stream) run_until(e->stream, e->point);
  return st.fault;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* data) {
  if (!fn) return null_handle("a null host function");
  enqueue(s, "host function", [fn, data] { fn(data); });
  return cudaSuccess;
}
