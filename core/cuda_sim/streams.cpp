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
//
// Watched operations (enqueue_watched, for the simulated NCCL): which items are ordered after an
// operation is tracked per operation as, for each stream, the first of its items that is. An
// event wait (or the legacy stream's implicit wait) on a point at or past an item that is ordered
// after the operation makes the stream's next items so; a host synchronisation with such a point
// makes every item queued afterwards so. Items on the operation's own stream are ordered by
// position. An item that runs while the operation is watched and is not ordered after it was
// queued concurrently with it (everything the operation was ordered after had run when it was
// watched); its effect on the operation's memory is checked. The operation's own result waits in
// its watch and lands before the first item ordered after it runs, before a later watched
// operation ordered after it touches its output, or when the watch ends. A watch ends once the host
// knows the operation completed and every item that was not ordered after it has run.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_memory.h"
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

// One watched operation: item `op` of `stream`, and the memory it reads or writes.
struct Watch {
  CUstream_st* stream = nullptr;
  uint64_t op = 0;
  std::string what;
  struct Part {
    Range range;
    uint64_t allocation = 0;  // the device allocation it lies in (sim_memory.h)
    bool live = true;         // still in that allocation when last hashed
    uint64_t hash = 0;        // of its contents then
  };
  std::vector<Part> parts;
  bool hashed = false;  // parts' hashes are current
  // Per stream, the first item that is ordered after the operation (none yet: not in the map).
  std::unordered_map<const CUstream_st*, uint64_t> first;
  bool host_knows = false;  // the host has synchronised with a point ordered after it
  // The operation's result (the simulated NCCL's), not yet applied. It lands just before the
  // first item ordered after the operation runs, before a later watched operation ordered after
  // it touches `output` (or the simulated NCCL reads inputs there: land_into), when the watch
  // ends, or when the cap on watches drops it. The host sees device memory only through items: a
  // copy it queues after learning the operation completed is ordered after it.
  std::function<void()> landing;
  Range output{nullptr, 0};  // where `landing` writes
  const char* item = "";     // the operation's item, naming it in a fault while landing
};

// More than this many watched operations at once: the oldest is no longer watched.
constexpr size_t kMaxWatches = 256;

struct Streams {
  std::recursive_mutex mu;
  CUstream_st legacy;
  // Every stream made, destroyed ones included: their queued work still runs, and a wait queued
  // on another stream may still name one.
  std::vector<CUstream_st*> all{&legacy};
  cudaError_t fault = cudaSuccess;
  std::string fault_message;
  std::deque<std::unique_ptr<Watch>> watches;
  size_t queued_total = 0;  // items ever queued, frees left out
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

// Set while this thread runs an item's work: CUDA forbids CUDA calls in host functions, and the
// queues must not change under run_until (it holds watches across the work).
thread_local bool running_item = false;

void refuse_inside_item(const char* call) {
  if (running_item)
    throw std::logic_error(std::string(call) +
                           " called from queued work (a host function): CUDA forbids it");
}

// Runs queued work (an item's, or a watched operation's result): what it throws is a fault.
void run_work(const char* what, const std::function<void()>& work) {
  try {
    running_item = true;
    work();
    running_item = false;
  } catch (const std::exception& e) {
    running_item = false;
    record_fault(what, e.what());
  } catch (...) {
    running_item = false;
    record_fault(what, "an exception that is not a std::exception");
  }
}

// ---- watched operations ---------------------------------------------------------------------

// Whether item k of stream t is ordered after w's operation.
// (On the operation's own stream, item `op` is the operation: a point past it is past its end.)
bool ordered_after(const Watch& w, const CUstream_st* t, uint64_t k) {
  if (t == w.stream) return k >= w.op;
  const auto it = w.first.find(t);
  return it != w.first.end() && k >= it->second;
}

// Applies w's result if it is still pending. Its item has run by then (whatever is ordered after
// the operation runs after it), but for the cap on watches, which lands the oldest early.
void land(Watch& w) {
  if (!w.landing) return;
  const std::function<void()> effect = std::exchange(w.landing, nullptr);
  Streams& st = streams();
  if (st.fault != cudaSuccess) return;
  run_work(w.item, effect);
  // The operation's own change: not to be blamed on the next concurrent item.
  for (auto& other : st.watches) other->hashed = false;
}

bool overlap(const Range& a, const Range& b) {
  const auto* pa = static_cast<const char*>(a.p);
  const auto* pb = static_cast<const char*>(b.p);
  return a.bytes && b.bytes && pa < pb + b.bytes && pb < pa + a.bytes;
}

// Item k of stream t is about to run: land the results of the operations it is ordered after (an
// operation's own item lands nothing). `ranges`: the memory it touches, when known (an NCCL
// operation's; null for a kernel's, which may touch anything): the other results stay out, for
// readers beside them to find the poison. `host`: the simulated NCCL reads the inputs on the host
// now, so the operation is ordered after everything the host knows completed too (as an item
// queued now would be: push()).
void land_before(const CUstream_st* t, uint64_t k, const std::vector<Range>* ranges = nullptr,
                 bool host = false) {
  for (auto& w : streams().watches)
    if (w->landing && (ordered_after(*w, t, k) || (host && w->host_knows)) &&
        !(t == w->stream && k == w->op) &&
        (!ranges || std::any_of(ranges->begin(), ranges->end(),
                                [&](const Range& r) { return overlap(w->output, r); })))
      land(*w);
}

// A hash of the memory's contents: every byte up to 1 MiB, beyond that 256 spread 4 KiB samples
// and the last (a write that misses all of them goes unseen; the simulation's buffers are small).
uint64_t hash_of(Range r) {
  const auto* b = static_cast<const unsigned char*>(r.p);
  uint64_t h = 1469598103934665603ull ^ r.bytes;
  // Eight bytes a step (then the tail byte by byte), each mixed in by a multiply and a shift.
  const auto mix = [&](size_t from, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t v;
      std::memcpy(&v, b + from + i, 8);
      h = (h ^ v) * 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ b[from + i]) * 1099511628211ull;
  };
  constexpr size_t kFull = size_t(1) << 20, kSample = 4096, kSamples = 256;
  if (r.bytes <= kFull) {
    mix(0, r.bytes);
  } else {
    for (size_t i = 0; i < kSamples; ++i) mix((r.bytes - kSample) / (kSamples - 1) * i, kSample);
  }
  return h;
}

// Whether p's allocation is still there (freed by work ordered after the operation: then it is
// no longer the operation's memory, even once a new allocation has the address).
bool still_live(const Watch::Part& p) {
  return device_allocation(p.range.p, p.range.bytes) == p.allocation;
}

void rehash(Watch& w) {
  for (Watch::Part& p : w.parts) {
    if (!p.live) continue;
    p.live = still_live(p);
    if (p.live) p.hash = hash_of(p.range);
  }
  w.hashed = true;
}

// Why `item` on `stream` and a watched operation may run at the same time.
std::string not_ordered(const char* item, const CUstream_st* stream) {
  return std::string("the ") + item + " was queued on " +
         (stream->flags & cudaStreamNonBlocking ? "a" : "a blocking") +
         " stream not ordered after that operation (no event wait and no host synchronisation "
         "after it), so on a GPU the two may run at the same time";
}

// The watches whose operations item k of stream s is not ordered after (it may run beside them),
// with their memory's hashes current, for check_concurrent after the item; the other watches'
// memory the item may change freely.
std::vector<Watch*> concurrent_with(const CUstream_st* s, uint64_t k) {
  std::vector<Watch*> concurrent;
  for (auto& w : streams().watches) {
    if (s != w->stream && !ordered_after(*w, s, k)) {
      if (!w->hashed) rehash(*w);
      concurrent.push_back(w.get());
    } else {
      w->hashed = false;
    }
  }
  return concurrent;
}

// "N bytes at P", for faults.
std::string bytes_at(const Range& r) {
  char where[96];
  std::snprintf(where, sizeof where, "%zu bytes at %p", r.bytes, r.p);
  return where;
}

// After `item` (not ordered after w's operation) ran: did it change or free w's memory?
void check_concurrent(Watch& w, const char* item, const CUstream_st* stream) {
  for (Watch::Part& p : w.parts) {
    if (!p.live) continue;
    const bool live = still_live(p);
    const uint64_t h = live ? hash_of(p.range) : 0;
    if (live && h == p.hash) continue;
    record_fault(item, std::string(live ? "changed " : "freed ") + bytes_at(p.range) +
                           ", memory of " + w.what +
                           ", while it may still run: " + not_ordered(item, stream));
    p.live = live;
    p.hash = h;
  }
}

// Stream s's next item is ordered after stream t's first `point` items (an event wait, or the
// legacy stream's implicit one; whether or not those items have run yet). True when that orders
// it after a watched operation it was not ordered after yet: the caller then queues the wait
// even if t has passed the point already, so that the ordering belongs to an item of s (points
// taken on s after it, by an event or a host synchronisation, include it).
bool learn_order(const CUstream_st* s, const CUstream_st* t, uint64_t point) {
  if (point == 0 || t == s) return false;
  bool learned = false;
  for (auto& w : streams().watches)
    if (s != w->stream && !w->first.count(s) && ordered_after(*w, t, point - 1)) {
      w->first[s] = s->queued;
      learned = true;
    }
  return learned;
}

// The host has waited for stream t's first `point` items.
void host_learns(const CUstream_st* t, uint64_t point) {
  if (point == 0) return;
  for (auto& w : streams().watches)
    if (!w->host_knows && ordered_after(*w, t, point - 1)) w->host_knows = true;
}

// Ends the watches no item can break any more.
void retire_watches() {
  Streams& st = streams();
  if (st.fault != cudaSuccess) {
    st.watches.clear();
    return;
  }
  const auto done = [&](const Watch& w) {
    if (!w.host_knows) return false;
    for (const CUstream_st* t : st.all) {
      // Items of t not ordered after the operation: those before first[t], or, with no first[t],
      // all queued so far (every later one will be: the host knows).
      const auto it = w.first.find(t);
      const uint64_t unordered = t == w.stream         ? w.op + 1
                                 : it != w.first.end() ? it->second
                                                       : t->queued;
      if (t->done < unordered) return false;
    }
    return true;
  };
  std::vector<bool> ended;
  for (auto& w : st.watches) {
    ended.push_back(done(*w));
    if (ended.back()) land(*w);  // if nothing ordered after it has run yet
  }
  std::deque<std::unique_ptr<Watch>> kept;
  for (size_t i = 0; i < ended.size(); ++i)
    if (!ended[i]) kept.push_back(std::move(st.watches[i]));
  st.watches.swap(kept);
}

// ---- queues -----------------------------------------------------------------------------------

// Runs s's items until `point` of them have run; the caller holds the lock.
void run_until(CUstream_st* s, uint64_t point) {
  Streams& st = streams();
  while (s->done < point && !s->queue.empty()) {
    CUstream_st::Item item = std::move(s->queue.front());
    s->queue.pop_front();
    if (item.after) run_until(item.after, item.point);
    if (item.work && (item.release || st.fault == cudaSuccess)) {
      land_before(s, s->done);
      const std::vector<Watch*> concurrent = concurrent_with(s, s->done);
      run_work(item.what, item.work);
      for (Watch* w : concurrent)
        if (st.fault == cudaSuccess) check_concurrent(*w, item.what, s);
    }
    ++s->done;
  }
}

void push(CUstream_st* s, CUstream_st::Item item) {
  // Is the new item the first of s that is ordered after a watched operation?
  if (item.after) learn_order(s, item.after, item.point);
  for (auto& w : streams().watches)
    if (w->host_knows && s != w->stream && !w->first.count(s)) w->first[s] = s->queued;
  s->queue.push_back(std::move(item));
  ++s->queued;
}

// The legacy default stream's implicit ordering: its work waits for every blocking stream's work
// queued before it, and a blocking stream's work for the legacy stream's (non-blocking streams,
// such as the CUDA backend's, take part in neither).
void order_against_legacy(CUstream_st* s) {
  Streams& st = streams();
  const auto wait_for = [&](CUstream_st* other) {
    if (other == s) return;
    if (learn_order(s, other, other->queued) || other->queued > other->done)
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
  refuse_inside_item(what);
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  order_against_legacy(s);
  push(s, CUstream_st::Item{std::move(work), what, release, nullptr, 0});
  if (!release) ++st.queued_total;
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

void enqueue_watched(cudaStream_t stream, WatchedOperation op) {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);  // the item and its watch as one
  auto w = std::make_unique<Watch>();
  for (const Range& r : op.memory)
    if (const uint64_t a = r.bytes > 0 ? device_allocation(r.p, r.bytes) : 0)
      w->parts.push_back(Watch::Part{r, a});
  if (w->parts.empty() || st.fault != cudaSuccess) {
    // Nothing to watch: the result is the item's work.
    if (op.at_call && st.fault == cudaSuccess) op.at_call();
    queue_item(stream, op.item, std::move(op.result), false);
    return;
  }
  queue_item(
      stream, op.item, [] {}, false);  // the result lands through the watch
  CUstream_st* s = resolve(stream);
  const uint64_t here = s->queued - 1;
  // Earlier results this operation reads or overwrites land first.
  land_before(s, here, &op.memory);
  // As run_until checks an item, at the operation's place in its stream: what it writes at the
  // call, and (before it lands, unchecked) where its result will go.
  const std::vector<Watch*> concurrent = concurrent_with(s, here);
  if (op.at_call) op.at_call();
  for (Watch* other : concurrent) {
    check_concurrent(*other, op.item, s);
    for (const Watch::Part& p : other->parts)
      if (p.live && overlap(op.output, p.range)) {
        record_fault(op.item, "its output, " + bytes_at(op.output) + ", overlaps memory of " +
                                  other->what +
                                  ", which may still run: " + not_ordered(op.item, s));
      }
  }
  w->stream = s;
  w->op = here;
  w->what = std::move(op.name);
  w->item = op.item;
  w->landing = std::move(op.result);
  w->output = op.output;
  if (st.watches.size() >= kMaxWatches) {
    static bool told = false;
    if (!std::exchange(told, true))
      std::fprintf(stderr,
                   "[cuda sim] more than %zu NCCL operations in flight without a host "
                   "synchronisation: the oldest are no longer watched for concurrent writes (their "
                   "results land at once)\n",
                   kMaxWatches);
    land(*st.watches.front());
    st.watches.pop_front();
  }
  st.watches.push_back(std::move(w));
}

void land_into(cudaStream_t stream, const std::vector<Range>& ranges) {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  land_before(s, s->queued, &ranges, /*host=*/true);
}

size_t watched_operations() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  return st.watches.size();
}

void run_stream(cudaStream_t stream, bool host_waits) {
  refuse_inside_item("a stream synchronisation");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  // What the caller does next on the stream (a copy to the host, an NCCL call) comes after the
  // work it is ordered after implicitly: the legacy stream's, or the blocking streams'.
  order_against_legacy(s);
  run_until(s, s->queued);
  if (host_waits) host_learns(s, s->queued);
  retire_watches();
}

void run_device() {
  refuse_inside_item("a device synchronisation");
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
  // Everything has run: nothing queued can break a watched operation any more.
  for (auto& w : st.watches) land(*w);
  st.watches.clear();
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

size_t work_queued_so_far() {
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  return st.queued_total;
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
  refuse_inside_item("cudaEventRecord");
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
  refuse_inside_item("cudaStreamWaitEvent");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  CUstream_st* s = resolve(stream);
  if (e->stream && e->stream != s &&
      (learn_order(s, e->stream, e->point) || e->stream->done < e->point))
    push(s, CUstream_st::Item{{}, "event wait", false, e->stream, e->point});
  return cudaSuccess;
}
// A pending event answers "not ready" once, as a busy GPU would; asked again by the thread that
// recorded it, its work runs, so code polling it makes progress. Other threads (the watchdog's)
// only ever see it pending until someone runs it: their polling must not decide when work runs.
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!e) return null_handle("query of a null event");
  refuse_inside_item("cudaEventQuery");
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
  // Only the recording thread's queries count as the host waiting (not the watchdog's).
  if (e->stream && std::this_thread::get_id() == e->recorder) {
    host_learns(e->stream, e->point);
    retire_watches();
  }
  return st.fault;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return null_handle("synchronize of a null event");
  refuse_inside_item("cudaEventSynchronize");
  Streams& st = streams();
  const std::lock_guard<std::recursive_mutex> lock(st.mu);
  if (e->stream) {
    run_until(e->stream, e->point);
    host_learns(e->stream, e->point);
    retire_watches();
  }
  return st.fault;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* data) {
  if (!fn) return null_handle("a null host function");
  enqueue(s, "host function", [fn, data] { fn(data); });
  return cudaSuccess;
}
