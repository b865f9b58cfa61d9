#include "test/emulated_device.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "core/attention_plan.h"
#include "core/cuda_sim/host_block.h"
#include "core/dtype.h"
#include "core/error.h"

namespace ringattn::test {

namespace {

constexpr uintptr_t kTag = uintptr_t(1) << 62;

template <typename T>
T* tag(T* p) {
  return p ? reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + kTag) : p;
}

// The emulated compute stream: operations queue here and run, in order, only when something
// synchronises with the device. What a GPU does asynchronously is deferred here until the last
// moment, so code that reads a buffer before the operations writing it have run (a transfer
// started without ordering) sees stale data, as it could on a GPU.
class Stream {
 public:
  void enqueue(std::function<void()> op) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.push_back(std::move(op));
  }
  // The host waits for the device: counted, then drain().
  void synchronize() {
    ++host_waits_;
    drain();
  }
  size_t host_waits() const { return host_waits_.load(); }

  // Runs everything queued so far (and what is queued meanwhile), in order. Serialised: two
  // threads draining at once still run the operations one after the other.
  void drain() {
    std::lock_guard<std::recursive_mutex> run(run_mu_);
    for (;;) {
      std::function<void()> op;
      {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (queue_.empty()) return;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      op();
    }
  }
  size_t pending() {
    std::lock_guard<std::mutex> lock(queue_mu_);
    return queue_.size();
  }

 private:
  std::mutex queue_mu_;
  std::recursive_mutex run_mu_;
  std::deque<std::function<void()>> queue_;
  std::atomic<size_t> host_waits_{0};
};

Stream& stream() {
  static Stream s;
  return s;
}

// Like CUDA's allocator here: copies wait for the device first (cudaDeviceSynchronize), and
// memory is stream-ordered as with cudaMallocAsync / cudaFreeAsync: a block freed while queued
// operations still use it is handed out again at once (to a request of up to its size), so later
// work on the stream reuses it in order, but a transfer that writes a fresh buffer without waiting
// for the stream clobbers what those queued operations will read, as it could on a GPU.
class EmulatedAllocator final : public Allocator {
 public:
  EmulatedAllocator() : Allocator(Device::CUDA, "emulated-cuda") {}

  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    stream().synchronize();
    if (bytes) std::memcpy(untag(host_dst), untag(src), bytes);
  }
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override {
    stream().synchronize();
    if (bytes) std::memcpy(untag(dst), untag(host_src), bytes);
  }
  void copy_within(void* dst, const void* src, size_t bytes) override {
    stream().synchronize();
    if (bytes) std::memmove(untag(dst), untag(src), bytes);
  }
  // Queued like a kernel, as on CUDA (core/allocator.h): code that reads the zeros before the
  // stream has run sees what was there.
  void zero(void* dst, size_t bytes) override {
    if (!bytes) return;
    void* p = untag(dst);
    stream().enqueue([p, bytes] { std::memset(p, 0, bytes); });
  }

 protected:
  void* raw_allocate(size_t bytes) override {
    if (bytes > std::numeric_limits<size_t>::max() - 63) return nullptr;
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    std::lock_guard<std::mutex> lock(mu_);
    // The smallest cached block that fits (up to twice the size, so small requests do not pin
    // large blocks), as a stream-ordered pool carves its free blocks: work that still uses a
    // freed buffer meets new data even when the next request is not of the same size.
    void* p = nullptr;
    size_t size = rounded;
    if (auto it = freed_.lower_bound(rounded); it != freed_.end() && it->first / 2 <= rounded) {
      size = it->first;
      p = it->second;
      freed_.erase(it);
    } else {
      p = std::aligned_alloc(64, rounded);
      if (!p) return nullptr;
    }
    sizes_[p] = size;
    return tag(p);
  }
  // Kept for reuse, never returned to the system (the process ends first).
  void raw_free(void* ptr) override {
    void* p = untag(ptr);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    // Newest first among blocks of a size (lower_bound finds it): the block queued work is the
    // most likely to still be reading is the one handed out next.
    freed_.emplace_hint(freed_.lower_bound(it->second), it->second, p);
    sizes_.erase(it);
  }

 private:
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;  // live blocks
  std::multimap<size_t, void*> freed_;       // reusable blocks by size
};

// Host arrays an operation reads must be read when it is called (the CUDA backend copies them
// then); a deferred operation keeps its own copy. Device (tagged) arrays are only untagged.
template <typename T>
struct HostOrDevice {
  std::vector<T> copy;
  const T* ptr = nullptr;
  bool device = false;  // ptr is (untagged) device memory
  HostOrDevice(const T* p, int64_t n) : device(is_tagged(p)) {
    if (p && !device && n > 0) {
      copy.assign(p, p + n);
      ptr = copy.data();
    } else {
      ptr = untag(p);
    }
  }
};

// A tile problem made self-contained for deferred execution: untagged device pointers, own copies
// of host positions and segment ids.
struct DeferredProblem {
  AttentionTileProblem p;
  HostOrDevice<int64_t> q_pos, k_pos;
  HostOrDevice<int32_t> q_seg, k_seg;
  // AttentionTileProblem::fused: the plan (its checks, and its host positions, 0..n-1 where the
  // problem gives none), as core/cuda/cuda_attention.cu makes it before launching.
  std::shared_ptr<const TilePlan> plan;
  explicit DeferredProblem(const AttentionTileProblem& in)
      : p(in),
        q_pos(in.q_pos, in.sq),
        k_pos(in.k_pos, in.sk),
        q_seg(in.q_seg, in.batch * in.sq),
        k_seg(in.k_seg, in.batch * in.sk) {
    p.q_pos = q_pos.ptr;
    p.k_pos = k_pos.ptr;
    p.q_seg = q_seg.ptr;
    p.k_seg = k_seg.ptr;
    p.q = untag(in.q);
    p.k = untag(in.k);
    p.v = untag(in.v);
    p.q_bf16 = untag(in.q_bf16);
    p.k_bf16 = untag(in.k_bf16);
    p.v_bf16 = untag(in.v_bf16);
  }
};

AttentionForwardState untag_state(const AttentionForwardState& s) {
  return {untag(s.acc), untag(s.m), untag(s.l)};
}

AttentionBackwardArgs untag_args(const AttentionBackwardArgs& a) {
  return {untag(a.dout), untag(a.lse), untag(a.delta), untag(a.dq), untag(a.dk), untag(a.dv)};
}

// Every operation is the CPU backend's, on untagged pointers, queued on the emulated stream.
// Operations that return a value (sum_squares) and the synchronous copies drain the
// stream first and run at once, as they synchronise on a GPU.
class EmulatedBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return "emulated-cuda (CPU kernels, tagged pointers, deferred stream)";
  }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    defer([=, a = untag(a), b = untag(b), c = untag(c)] {
      cpu().gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
  }
  void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                 const uint16_t* b, int ldb, float beta, float* c, int ldc) override {
    defer([=, a = untag(a), b = untag(b), c = untag(c)] {
      cpu().gemm_bf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
  }
  void to_bf16(const float* src, uint16_t* dst, int64_t n) override {
    defer([=, src = untag(src), dst = untag(dst)] { cpu().to_bf16(src, dst, n); });
  }
  void from_bf16(const uint16_t* src, float* dst, int64_t n) override {
    defer([=, src = untag(src), dst = untag(dst)] { cpu().from_bf16(src, dst, n); });
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    stream().synchronize();
    cpu().copy_to_host(untag(dst), untag(src), bytes);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    stream().synchronize();
    cpu().copy_from_host(untag(dst), untag(src), bytes);
  }
  void synchronize() override { stream().synchronize(); }

  void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                              int head_dim) override {
    defer([=, st = untag_state(st)] {
      cpu().attention_forward_init(st, batch, sq, heads, head_dim);
    });
  }
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats) override {
    auto dp = std::make_shared<DeferredProblem>(p);
    plan_fused(*dp);
    count_now(*dp, stats, 4.0);
    defer([=, st = untag_state(st)] {
      if (dp->plan) {  // the CUDA kernels' own body, emulated
        sim::run_fused_forward(with_plan(fused::Args{dp->p, st, {}}, *dp->plan));
      } else {
        cpu().attention_forward_block(dp->p, st, nullptr);
      }
    });
  }
  void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                int64_t batch, int64_t sq, int heads, int head_dim) override {
    defer([=, st = untag_state(st), o = untag(o), lse = untag(lse)] {
      cpu().attention_forward_finish(st, o, lse, batch, sq, heads, head_dim);
    });
  }
  void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                                int64_t sq, int heads, int head_dim) override {
    defer([=, dout = untag(dout), o = untag(o), delta = untag(delta)] {
      cpu().attention_backward_delta(dout, o, delta, batch, sq, heads, head_dim);
    });
  }
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats) override {
    auto dp = std::make_shared<DeferredProblem>(p);
    plan_fused(*dp);
    count_now(*dp, stats, 10.0);
    defer([=, a = untag_args(a)] {
      if (dp->plan) {
        sim::run_fused_backward(with_plan(fused::Args{dp->p, {}, a}, *dp->plan));
      } else {
        cpu().attention_backward_block(dp->p, a, nullptr);
      }
    });
  }

  void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                         int64_t dim, float* out) override {
    defer([=, tokens = untag(tokens), table = untag(table), out = untag(out)] {
      cpu().embedding_forward(tokens, n, table, vocab, dim, out);
    });
  }
  void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table,
                              int64_t vocab, int64_t dim, float* out) override {
    defer([=, tokens = untag(tokens), table = untag(table), out = untag(out)] {
      cpu().embedding_forward_bf16(tokens, n, table, vocab, dim, out);
    });
  }
  void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                          int64_t dim, float* dtable) override {
    defer([=, tokens = untag(tokens), dout = untag(dout), dtable = untag(dtable)] {
      cpu().embedding_backward(tokens, n, dout, vocab, dim, dtable);
    });
  }
  void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms) override {
    defer([=, x = untag(x), w = untag(w), y = untag(y), inv_rms = untag(inv_rms)] {
      cpu().rmsnorm_forward(x, w, rows, dim, eps, y, inv_rms);
    });
  }
  void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                        int64_t rows, int64_t dim, float* dx, float* dw) override {
    defer([=, x = untag(x), w = untag(w), inv_rms = untag(inv_rms), dy = untag(dy), dx = untag(dx),
           dw = untag(dw)] { cpu().rmsnorm_backward(x, w, inv_rms, dy, rows, dim, dx, dw); });
  }
  void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                    const int64_t* positions, float theta) override {
    auto pos = std::make_shared<HostOrDevice<int64_t>>(positions, seq);
    defer(
        [=, x = untag(x)] { cpu().rope_forward(x, batch, seq, heads, head_dim, pos->ptr, theta); });
  }
  void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                     const int64_t* positions, float theta) override {
    auto pos = std::make_shared<HostOrDevice<int64_t>>(positions, seq);
    defer([=, dx = untag(dx)] {
      cpu().rope_backward(dx, batch, seq, heads, head_dim, pos->ptr, theta);
    });
  }
  void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) override {
    defer([=, gate = untag(gate), up = untag(up), out = untag(out)] {
      cpu().swiglu_forward(gate, up, n, out);
    });
  }
  void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                       float* dgate, float* dup) override {
    defer([=, gate = untag(gate), up = untag(up), dout = untag(dout), dgate = untag(dgate),
           dup = untag(dup)] { cpu().swiglu_backward(gate, up, dout, n, dgate, dup); });
  }
  void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                          int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                          uint8_t* correct, double* row_loss) override {
    defer([=, logits = untag(logits), targets = untag(targets), weights = untag(weights),
           dlogits = untag(dlogits), correct = untag(correct), row_loss = untag(row_loss)] {
      cpu().cross_entropy_rows(logits, targets, weights, rows, vocab, grad_scale, dlogits, correct,
                               row_loss);
    });
  }
  void axpy(int64_t n, float alpha, const float* x, float* y) override {
    defer([=, x = untag(x), y = untag(y)] { cpu().axpy(n, alpha, x, y); });
  }
  void scale(float* x, int64_t n, float alpha) override {
    defer([=, x = untag(x)] { cpu().scale(x, n, alpha); });
  }
  void fill(float* x, int64_t n, float value) override {
    defer([=, x = untag(x)] { cpu().fill(x, n, value); });
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    defer([=, dst = untag(dst), src = untag(src)] { cpu().copy(dst, src, bytes); });
  }
  double sum_squares(const float* x, int64_t n) override {
    stream().synchronize();
    return cpu().sum_squares(untag(x), n);
  }
  void scale_f64(float* x, int64_t n, double s) override {
    defer([=, x = untag(x)] { cpu().scale_f64(x, n, s); });
  }
  void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                    int64_t n) override {
    defer([=, params = untag(params), grads = untag(grads), m = untag(m), v = untag(v)] {
      cpu().adamw_update(k, params, grads, m, v, n);
    });
  }

 private:
  static Backend& cpu() { return cpu_backend(); }
  // Tile statistics are known when the call is made (the tiles are planned on the host, as the
  // CUDA backend does), so the caller's `stats` is complete when the call returns, and the
  // deferred operation never writes through a pointer that may be gone by then.
  // The plan of a call, made now (the statistics and the checks happen at call time, as on CUDA).
  static std::shared_ptr<const TilePlan> make_plan(const DeferredProblem& dp) {
    const AttentionTileProblem& p = dp.p;
    // Device positions or segment ids (untagged by now) are read after the queue ran, as
    // CUDA's planning copies them back after a synchronisation.
    if (dp.q_pos.device || dp.k_pos.device || dp.q_seg.device || dp.k_seg.device)
      stream().synchronize();
    return std::make_shared<const TilePlan>(
        p, host_values(p.q_pos, p.sq), host_values(p.k_pos, p.sk),
        host_values(p.q_seg, p.batch * p.sq), host_values(p.k_seg, p.batch * p.sk));
  }
  // AttentionTileProblem::fused: checked and planned as the CUDA backend does (zero sizes:
  // nothing).
  static void plan_fused(DeferredProblem& dp) {
    const AttentionTileProblem& p = dp.p;
    if (p.batch == 0 || p.sq == 0 || p.sk == 0 || !runs_fused(p)) return;
    dp.plan = make_plan(dp);
  }
  // The fused kernels' arguments with the plan's host positions and segment ids.
  static fused::Args with_plan(fused::Args a, const TilePlan& plan) {
    a.p.q_pos = plan.q_pos.data();
    a.p.k_pos = plan.k_pos.data();
    a.p.q_seg = plan.segmented ? plan.q_seg.data() : nullptr;
    a.p.k_seg = plan.segmented ? plan.k_seg.data() : nullptr;
    return a;
  }
  static void count_now(const DeferredProblem& dp, AttentionTileStats* stats, double per_elem) {
    if (!stats) return;
    const AttentionTileProblem& p = dp.p;
    if (p.batch == 0 || p.sq == 0 || p.sk == 0) return;
    const std::shared_ptr<const TilePlan> plan = dp.plan ? dp.plan : make_plan(dp);
    add_tile_stats(stats, plan_stats(*plan, p.batch, p.heads, p.head_dim, per_elem));
  }
  static void defer(std::function<void()> op) { stream().enqueue(std::move(op)); }
};

// NCCL's semantics on the emulated device: device buffers go to the host transport as they are
// (untagged), with no staging and without running the emulated stream first.
class DirectRing final : public RingExchange {
 public:
  DirectRing(std::unique_ptr<RingExchange> inner, bool ordered)
      : inner_(std::move(inner)), ordered_(ordered) {
    next_ = inner_->next();
    prev_ = inner_->prev();
  }
  void start(const void* send, void* recv, size_t bytes) override {
    // The `ready` event: the transfer follows what is queued on the compute stream.
    if (ordered_) stream().drain();  // device-side ordering: not a wait of the host
    inner_->start(untag(send), untag(recv), bytes);
    bytes_moved_ = inner_->bytes_moved();
    in_flight_ = true;
  }
  bool test() override { return inner_->test(); }
  // What was queued between start() and here runs now, while the transfer may still be in flight
  // (on a GPU the two streams run side by side), so touching the exchange's buffers in between
  // shows. Operations queued after this returns run at a later drain, after the transfer: the
  // compute stream's wait on `done`. With nothing in flight it returns at once, as the contract
  // says (a RingDrain ends every ring scope with a wait()).
  void wait() override {
    if (!in_flight_) return;
    if (ordered_) stream().drain();
    inner_->wait();
    in_flight_ = false;
    wait_seconds_ = inner_->wait_seconds();
  }

 private:
  std::unique_ptr<RingExchange> inner_;
  bool ordered_;
  bool in_flight_ = false;
};

// A stream-ordered collective on the emulated device, as strict as a GPU may be. On a GPU the
// collective runs on the communication stream beside whatever the compute stream runs until
// order() (or the point's destruction) makes the compute stream wait for it. So until then its
// output is not there yet, and its input must not change. Here the collective has already run
// into a private buffer, and the output buffer holds NaN (all-ones bytes) until order(). The
// input stays as it is where it lies inside the output (the in-place all-gather).
//
// order() runs what was queued meanwhile, then checks that the input is unchanged (a
// std::logic_error otherwise), then writes the output. Work queued in between that reads the
// output sees NaN. Work that writes the output is overwritten. Work that writes the input, or
// frees it for reuse, fails the check.
class DeferredPoint final : public StreamPoint {
 public:
  DeferredPoint(const void* send, size_t send_bytes, void* recv, std::vector<unsigned char> result)
      : send_(static_cast<const unsigned char*>(untag(send))),
        recv_(static_cast<unsigned char*>(untag(recv))),
        input_(send_, send_ + send_bytes),
        result_(std::move(result)) {
    // The bytes of recv outside the input: the communication stream writes them at any time now.
    unsigned char* end = recv_ + result_.size();
    const unsigned char* in_end = send_ + send_bytes;
    for (unsigned char* q = recv_; q < end; ++q)
      if (q < send_ || q >= in_end) *q = 0xFF;
  }
  ~DeferredPoint() override {
    try {
      order();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "emulated device: %s\n", e.what());
      std::abort();  // a destructor cannot throw; the test run must fail
    }
  }
  DeferredPoint(const DeferredPoint&) = delete;
  DeferredPoint& operator=(const DeferredPoint&) = delete;

  void order() override {
    if (ordered_) return;
    ordered_ = true;
    stream().drain();  // on a GPU this work may run before the collective is over
    if (!input_.empty() && std::memcmp(send_, input_.data(), input_.size()) != 0)
      throw std::logic_error(
          "emulated device: work queued between a stream-ordered collective and its order() "
          "changed the collective's input (a race with the communication stream on a GPU)");
    if (!result_.empty()) std::memcpy(recv_, result_.data(), result_.size());
  }

 private:
  const unsigned char* send_;
  unsigned char* recv_;
  std::vector<unsigned char> input_, result_;
  bool ordered_ = false;
};

class DirectCommunicator final : public Communicator {
 public:
  explicit DirectCommunicator(Communicator& host) : host_(host) {}
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  Device device() const override { return Device::CUDA; }
  bool accepts_host_buffers() const override { return false; }
  std::string name() const override { return host_.name() + " (emulated NCCL semantics)"; }

  // As on NCCL, a collective reads its inputs when called: the caller must have synchronised.
  void all_reduce(void* buf, size_t count, DType dtype, ReduceOp op) override {
    host_.all_reduce(untag(buf), count, dtype, op);
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    host_.all_gather(untag(send), untag(recv), count, dtype);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op) override {
    host_.reduce_scatter(untag(send), untag(recv), count, dtype, op);
  }
  void broadcast(void* buf, size_t count, DType dtype, int root) override {
    host_.broadcast(untag(buf), count, dtype, root);
  }
  void barrier() override { host_.barrier(); }
  // The `ready` event: the stream runs first, then the collective reads its input. Its output is
  // held back until the point is ordered (DeferredPoint), so work queued in between that touches
  // the buffers shows, as it could on a GPU.
  bool orders_on_device() const override { return true; }
  std::unique_ptr<StreamPoint> all_gather_ordered(const void* send, void* recv, size_t count,
                                                  DType dtype, Backend&) override {
    stream().drain();
    const size_t bytes = count * dtype_size(dtype);
    std::vector<unsigned char> result(bytes * size_t(size()));
    host_.all_gather(untag(send), result.data(), count, dtype);
    return std::make_unique<DeferredPoint>(send, bytes, recv, std::move(result));
  }
  std::unique_ptr<StreamPoint> reduce_scatter_ordered(const void* send, void* recv, size_t count,
                                                      DType dtype, ReduceOp op, Backend&) override {
    stream().drain();
    const size_t bytes = count * dtype_size(dtype);
    std::vector<unsigned char> result(bytes);
    host_.reduce_scatter(untag(send), result.data(), count, dtype, op);
    return std::make_unique<DeferredPoint>(send, bytes * size_t(size()), recv, std::move(result));
  }
  std::unique_ptr<RingExchange> make_ring(Backend* compute) override {
    return std::make_unique<DirectRing>(host_.make_ring(), compute != nullptr);
  }

 private:
  Communicator& host_;
};

}  // namespace

size_t emulated_pending_operations() {
  return stream().pending();
}

void emulated_synchronize() {
  stream().synchronize();
}

size_t emulated_host_waits() {
  return stream().host_waits();
}

std::unique_ptr<Communicator> make_emulated_direct_communicator(Communicator& host) {
  RA_CHECK(host.device() == Device::CPU, "the emulated direct transport wraps a host communicator");
  return std::make_unique<DirectCommunicator>(host);
}

DeviceUnderTest device_under_test() {
  if (cuda_device_count() > 0) return {&cuda_backend(0), false};
  // Never destroyed: tensors in other static objects may still free into it at exit, and its
  // cached blocks stay reachable for LeakSanitizer (which runs after static destructors).
  static EmulatedAllocator& allocator = *new EmulatedAllocator();
  static EmulatedBackend backend;
  static std::once_flag installed;
  std::call_once(installed, [] {
    register_allocator(Device::CUDA, &allocator);
    std::printf(
        "[device] no usable GPU: these tests run on the emulated device (tagged pointers, "
        "CPU kernels; results must equal the CPU's bitwise)\n");
  });
  return {&backend, true};
}

}  // namespace ringattn::test
