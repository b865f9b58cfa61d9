#include "comm/host_staged_communicator.h"

#include <fmt/format.h>

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"

namespace ringattn {

namespace {

// A host buffer of at least `bytes`, from the counting host allocator.
Tensor host_buffer(size_t bytes, std::string_view what) {
  return Tensor::empty({int64_t(bytes)}, DType::U8, Device::CPU, what);
}

class StagedRing final : public RingExchange {
 public:
  // `alone`: a ring of one rank, whose exchange is a copy on the device: queued on `compute`'s
  // stream when the ring was made with the backend that computes (ordered like its other
  // operations, no host wait: a one-GPU ring attention sends dK/dV once per layer), else the
  // allocator's synchronous copy.
  StagedRing(std::unique_ptr<RingExchange> inner, Allocator& device, bool alone, Backend* compute)
      : inner_(std::move(inner)),
        device_(device),
        alone_(alone),
        compute_(compute && compute->device() == device.device() ? compute : nullptr) {
    next_ = inner_->next();
    prev_ = inner_->prev();
  }

  void start(const void* send, void* recv, size_t bytes) override {
    RA_CHECK(recv_ == nullptr, "ring exchange: start() while an exchange is in flight");
    if (alone_) {
      if (bytes && send != recv) {
        if (compute_)
          compute_->copy(recv, send, bytes);
        else
          device_.copy_within(recv, send, bytes);
      }
      return;
    }
    if (size_t(send_host_.numel()) < bytes) {
      send_host_ = host_buffer(bytes, "ring staging (send)");
      recv_host_ = host_buffer(bytes, "ring staging (receive)");
    }
    device_.copy_to_host(send_host_.raw(), send, bytes);
    inner_->start(send_host_.raw(), recv_host_.raw(), bytes);
    recv_ = recv;
    bytes_ = bytes;
    sync_stats();
  }
  bool test() override { return alone_ || inner_->test(); }
  void wait() override {
    if (alone_) return;
    inner_->wait();
    sync_stats();
    if (!recv_) return;
    void* recv = recv_;
    recv_ = nullptr;
    device_.copy_from_host(recv, recv_host_.raw(), bytes_);
  }

 private:
  void sync_stats() {
    wait_seconds_ = inner_->wait_seconds();
    bytes_moved_ = inner_->bytes_moved();
  }

  std::unique_ptr<RingExchange> inner_;
  Allocator& device_;
  const bool alone_;
  Backend* compute_;  // null: copies through device_
  Tensor send_host_, recv_host_;
  void* recv_ = nullptr;  // the caller's receive buffer while an exchange is in flight
  size_t bytes_ = 0;
};

class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(Communicator& host, Allocator& device) : host_(host), device_(device) {
    RA_CHECK(host.device() == Device::CPU,
             "host staging needs a host-memory communicator, got '{}' on {}", host.name(),
             device_name(host.device()));
  }

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  Device device() const override { return device_.device(); }
  bool accepts_host_buffers() const override { return true; }
  std::string name() const override {
    return fmt::format("{} staged through host memory for {}", host_.name(), device_.name());
  }

  // A group of one rank (an axis of size 1, or one GPU training alone with comm.transport = mpi)
  // copies on the device instead of staging: the first GPU run spent 30% of a 1B step staging
  // every FSDP unit through host memory on a single rank. The buffers are those the staged path
  // takes: device memory, or host memory where the device allocator's copies accept it (CUDA's
  // do, through cudaMemcpyDefault); host scalars go through all_reduce, then nothing to do.
  bool alone() const { return size() == 1; }
  void local_copy(void* dst, const void* src, size_t bytes) {
    if (bytes && dst != src) device_.copy_within(dst, src, bytes);
  }

  void all_reduce(void* buf, size_t count, DType dtype, ReduceOp op) override {
    if (alone()) return;
    const size_t bytes = count * dtype_size(dtype);
    Tensor h = host_buffer(bytes, "all-reduce staging");
    device_.copy_to_host(h.raw(), buf, bytes);
    host_.all_reduce(h.raw(), count, dtype, op);
    device_.copy_from_host(buf, h.raw(), bytes);
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    const size_t bytes = count * dtype_size(dtype);
    if (alone()) return local_copy(recv, send, bytes);
    Tensor h = host_buffer(bytes * size_t(size()), "all-gather staging");
    // In place (send == recv + rank * count) is fine: send is staged before recv is written.
    char* mine = h.data<char>() + bytes * size_t(rank());
    device_.copy_to_host(mine, send, bytes);
    host_.all_gather(mine, h.raw(), count, dtype);
    device_.copy_from_host(recv, h.raw(), bytes * size_t(size()));
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op) override {
    const size_t bytes = count * dtype_size(dtype);
    if (alone()) return local_copy(recv, send, bytes);
    Tensor hs = host_buffer(bytes * size_t(size()), "reduce-scatter staging (send)");
    Tensor hr = host_buffer(bytes, "reduce-scatter staging (receive)");
    device_.copy_to_host(hs.raw(), send, bytes * size_t(size()));
    host_.reduce_scatter(hs.raw(), hr.raw(), count, dtype, op);
    device_.copy_from_host(recv, hr.raw(), bytes);
  }
  void broadcast(void* buf, size_t count, DType dtype, int root) override {
    if (alone()) return;
    const size_t bytes = count * dtype_size(dtype);
    Tensor h = host_buffer(bytes, "broadcast staging");
    if (rank() == root) device_.copy_to_host(h.raw(), buf, bytes);
    host_.broadcast(h.raw(), count, dtype, root);
    if (rank() != root) device_.copy_from_host(buf, h.raw(), bytes);
  }
  void barrier() override { host_.barrier(); }

  // The staging copies wait for the device's queued work and are synchronous: both orders of
  // RingExchange::start hold without the compute backend. A ring of one copies on `compute`'s
  // stream instead, which keeps the same orders (RingExchange).
  std::unique_ptr<RingExchange> make_ring(Backend* compute) override {
    return std::make_unique<StagedRing>(host_.make_ring(), device_, alone(), compute);
  }

 private:
  Communicator& host_;
  Allocator& device_;
};

}  // namespace

std::unique_ptr<Communicator> make_host_staged_communicator(Communicator& host, Allocator& device) {
  return std::make_unique<HostStagedCommunicator>(host, device);
}

}  // namespace ringattn
