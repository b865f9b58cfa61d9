#include "model/fsdp/flat_shard.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#include "comm/watchdog.h"
#include "core/debug_faults.h"
#include "core/error.h"
#include "model/fsdp/wait_timer.h"

namespace ringattn {

ShardLayout ShardLayout::make(int64_t numel, int group_size, int rank) {
  RA_CHECK(numel >= 0, "shard layout: negative element count {}", numel);
  RA_CHECK(group_size >= 1, "shard layout: group size must be >= 1, got {}", group_size);
  RA_CHECK(rank >= 0 && rank < group_size, "shard layout: rank {} is not in a group of {}", rank,
           group_size);
  ShardLayout l;
  l.numel = numel;
  l.group_size = group_size;
  l.rank = rank;
  l.shard_numel = (numel + group_size - 1) / group_size;
  l.padded_numel = l.shard_numel * group_size;
  return l;
}

int64_t ShardLayout::shard_valid() const {
  return std::clamp<int64_t>(numel - shard_begin(), 0, shard_numel);
}

FlatShard::FlatShard(FsdpGroup& group, int64_t numel, std::string name)
    : group_(group),
      layout_(ShardLayout::make(numel, group.size(), group.rank())),
      alone_(group.size() == 1 && debug_fault("fsdp_communicate_alone") != 1),
      name_(std::move(name)) {
  params_ = Tensor::zeros({layout_.shard_numel}, DType::F32, device(), name_ + " params shard");
  grads_ = Tensor::zeros({layout_.shard_numel}, DType::F32, device(), name_ + " grads shard");
}

Device FlatShard::device() const {
  return group_.backend().device();
}

FlatShard::~FlatShard() {
  // The helper thread may still be using our buffers (its jobs write the gathered parameters and
  // grads_ through raw pointers): wait, and
  // swallow errors, as a destructor cannot report them. A stream-ordered gather is ordered before
  // its buffers go, and deferred reduce-scatters (which add into grads_) are retired.
  try {
    full_point_.reset();
    group_.retire(0);
    if (full_job_.valid()) full_job_.wait();
    for (std::future<void>& f : grad_jobs_)
      if (f.valid()) f.wait();
  } catch (...) {
  }
}

std::span<float> FlatShard::param_span() {
  RA_CHECK(device() == Device::CPU, "FSDP '{}': param_span() of a device shard", name_);
  return {params_.data<float>(), size_t(layout_.shard_valid())};
}

std::span<float> FlatShard::grad_span() {
  RA_CHECK(device() == Device::CPU, "FSDP '{}': grad_span() of a device shard", name_);
  return {grads_.data<float>(), size_t(layout_.shard_valid())};
}

void FlatShard::load_full(const float* full, int64_t n) {
  RA_CHECK(n == layout_.numel, "FSDP '{}': load_full got {} elements, the layer has {}", name_, n,
           layout_.numel);
  wait_full();  // a gather in flight reads params_
  const int64_t valid = layout_.shard_valid();
  params_.fill_zero();  // the padding
  if (valid > 0)
    params_.allocator().copy_from_host(params_.data<float>(), full + layout_.shard_begin(),
                                       size_t(valid) * sizeof(float));
}

void FlatShard::set_gather_dtype(DType t) {
  RA_CHECK(t == DType::F32 || t == DType::BF16,
           "FSDP '{}': parameters are gathered as F32 or BF16, not {}", name_, dtype_name(t));
  RA_CHECK(full_state_ == FullState::Absent,
           "FSDP '{}': the gather type cannot change while full parameters exist", name_);
  gather_dtype_ = t;
}

void FlatShard::prefetch_full() {
  if (full_state_ != FullState::Absent) return;
  // A group of one has nothing to gather: its master shard is the full buffer (N_pad = N). In
  // float32 the layers read it in place, with no copy and no memory (AdamW writes the shard only
  // between steps, when no full buffer exists); in bf16 it is rounded into the full buffer in
  // stream order. Either way no host wait and no job.
  const bool bf16 = gather_dtype_ == DType::BF16;
  if (reads_params_in_place()) {
    full_ = params_;
    full_state_ = FullState::Ready;
    return;
  }
  // Allocated here, on the caller's thread, so that a memory-limit error surfaces at the call
  // and the bytes count from the moment the prefetch is issued.
  full_ = Tensor::empty({layout_.padded_numel}, gather_dtype_, device(),
                        name_ + (bf16 ? " full params (bf16)" : " full params"));
  if (alone_) {
    try {
      if (layout_.padded_numel > 0)
        group_.backend().to_bf16(params_.data<float>(), full_.data<uint16_t>(),
                                 layout_.padded_numel);
    } catch (...) {
      full_ = Tensor();  // leave no full buffer behind
      throw;
    }
    full_state_ = FullState::Ready;
    return;
  }
  Backend& be = group_.backend();
  Communicator& comm = group_.comm();
  const float* shard = params_.data<float>();
  const size_t count = size_t(layout_.shard_numel);
  // What this rank contributes: its float32 master shard, or under bf16 that shard rounded
  // straight into its own block of the full buffer, which the gather then fills in place.
  // Raw pointers, no Tensor copies: full_ is only dropped after this job is waited for
  // (release_full, the destructor), and a copy held by the job would free the buffer whenever
  // the helper thread gets round to destroying the job, not at release_full().
  void* full = full_.raw();
  uint16_t* mine = bf16 ? full_.data<uint16_t>() + layout_.shard_begin() : nullptr;
  const void* send = bf16 ? static_cast<const void*>(mine) : shard;
  const DType type = gather_dtype_;
  try {
    if (bf16 && count > 0) be.to_bf16(shard, mine, int64_t(count));
    if (comm.orders_on_device()) {
      // NCCL: queued on the communication stream behind what the compute stream holds now
      // (AdamW's update, the rounding), running beside what is queued next (the current layer);
      // wait_full() makes the compute stream wait for it. Nothing waits on the host; no helper
      // thread is involved.
      full_point_ = comm.all_gather_ordered(send, full, count, type, be);
      full_ordered_ = true;
      full_state_ = FullState::Pending;
      return;
    }
    // The job reads what the compute stream wrote (AdamW's update, the rounding): wait.
    be.synchronize();
  } catch (...) {
    full_point_.reset();  // orders the compute stream after whatever was queued
    full_ = Tensor();     // nothing runs: leave no full buffer behind
    throw;
  }
  WaitTimer timer(group_.wait_times().gather_s);  // the whole gather in Sync mode
  full_job_ =
      group_.submit([&comm, send, full, count, type] { comm.all_gather(send, full, count, type); });
  full_state_ = FullState::Pending;
}

void FlatShard::wait_full() {
  if (full_state_ != FullState::Pending) return;
  if (full_ordered_) {
    // Everything queued on the compute stream from here on runs after the gather.
    full_ordered_ = false;
    {
      // ~0 on a GPU; where the backend completes its calls (bench train's profiling) order()
      // waits on the host, and this is the gather's exposed part.
      WaitTimer timer(group_.wait_times().gather_s);
      if (full_point_) full_point_->order();
    }
    full_point_.reset();
    full_state_ = FullState::Ready;
    return;
  }
  std::future<void> job = std::move(full_job_);
  WaitTimer timer(group_.wait_times().gather_s);
  try {
    const WatchdogScope watch("FSDP all-gather wait of '" + name_ + "'", -1, "");
    job.get();
  } catch (...) {
    full_ = Tensor();
    full_state_ = FullState::Absent;
    throw;
  }
  full_state_ = FullState::Ready;
}

Tensor FlatShard::gather_full() {
  prefetch_full();
  wait_full();
  return full_.slice(0, 0, layout_.numel);
}

void FlatShard::release_full() {
  wait_full();
  full_ = Tensor();
  full_state_ = FullState::Absent;
}

Tensor FlatShard::full_grad() {
  if (!full_grad_.defined())
    full_grad_ = Tensor::zeros({layout_.padded_numel}, DType::F32, device(), name_ + " full grads");
  return full_grad_.slice(0, 0, layout_.numel);
}

void FlatShard::start_rs(Tensor padded_full, float scale) {
  Communicator& comm = group_.comm();
  const size_t count = size_t(layout_.shard_numel);
  float* out = grads_.data<float>();
  Backend& be = group_.backend();
  if (alone_) {
    // A group of one reduces nothing (a one-rank sum is a copy): the full gradient is added
    // straight into the shard in stream order, with no collective, no host wait and no job.
    // The same bits as the collective path's copy-then-add. padded_full is freed on return,
    // after the addition in stream order.
    if (count > 0) be.axpy(int64_t(count), scale, padded_full.data<float>(), out);
    return;
  }
  Tensor reduced =
      Tensor::empty({layout_.shard_numel}, DType::F32, device(), name_ + " reduced grads");
  if (comm.orders_on_device()) {
    // NCCL: queued after the backward that wrote the gradients, running beside the next layer's
    // backward. The previous reduce-scatter is retired now (the compute stream waits for it, then
    // adds its result and frees its buffers): it has had this layer's backward to overlap, and
    // at most two full-gradient buffers stay alive. wait_grads() retires the rest.
    std::unique_ptr<StreamPoint> point = comm.reduce_scatter_ordered(
        padded_full.data<float>(), reduced.data<float>(), count, DType::F32, ReduceOp::Sum, be);
    group_.defer(std::move(point), [&be, count, scale, out, padded_full, reduced]() mutable {
      be.axpy(int64_t(count), scale, reduced.data<float>(), out);  // grads += scale * reduced
      padded_full = Tensor();
      reduced = Tensor();
    });
    group_.retire(1);
    return;
  }
  // The job reads the full gradients off the compute stream: the backward must be done.
  be.synchronize();
  WaitTimer timer(group_.wait_times().reduce_scatter_s);  // the whole job in Sync mode
  // The job owns the full gradients (the caller may drop its reference at once) and frees them,
  // and its reduced shard, before it completes, so the memory is back in the allocator's
  // accounting by the time wait_grads() returns. Jobs run one at a time in submission order, so
  // the additions into grads_ keep that order. (On CUDA the addition and the frees are ordered
  // on the compute stream; nothing reads grads_ before wait_grads().)
  grad_jobs_.push_back(
      group_.submit([&comm, &be, count, padded_full, reduced, out, scale]() mutable {
        float* r = reduced.data<float>();
        comm.reduce_scatter(padded_full.data<float>(), r, count, DType::F32, ReduceOp::Sum);
        be.axpy(int64_t(count), scale, r, out);  // grads += scale * reduced (float32)
        padded_full = Tensor();
        reduced = Tensor();
      }));
}

void FlatShard::start_reduce_scatter_grads(float scale) {
  // A layer that produced no gradient this micro-batch still has to take part in the collective.
  Tensor full = full_grad_.defined() ? std::move(full_grad_)
                                     : Tensor::zeros({layout_.padded_numel}, DType::F32, device(),
                                                     name_ + " full grads");
  full_grad_ = Tensor();
  start_rs(std::move(full), scale);
}

void FlatShard::start_reduce_scatter_grads(const Tensor& full, float scale) {
  RA_CHECK(full.defined() && full.dtype() == DType::F32 && full.device() == device() &&
               full.is_contiguous() && full.ndim() == 1,
           "FSDP '{}': full gradients must be a contiguous 1-D F32 {} tensor, got {}", name_,
           device_name(device()), full.defined() ? full.str() : std::string("an undefined tensor"));
  RA_CHECK(full.numel() == layout_.numel || full.numel() == layout_.padded_numel,
           "FSDP '{}': full gradients have {} elements, expected {} (or {} padded)", name_,
           full.numel(), layout_.numel, layout_.padded_numel);
  if (full.numel() == layout_.padded_numel) {
    start_rs(full, scale);
    return;
  }
  Tensor padded =
      Tensor::zeros({layout_.padded_numel}, DType::F32, device(), name_ + " padded grads");
  if (layout_.numel > 0)
    group_.backend().copy(padded.data<float>(), full.data<float>(),
                          size_t(layout_.numel) * sizeof(float));
  start_rs(std::move(padded), scale);
}

void FlatShard::reduce_scatter_grads(float scale) {
  start_reduce_scatter_grads(scale);
  wait_grads();
}

void FlatShard::reduce_scatter_grads(const Tensor& full, float scale) {
  start_reduce_scatter_grads(full, scale);
  wait_grads();
}

void FlatShard::wait_grads() {
  group_.retire(0);  // stream-ordered reduce-scatters: their additions are queued from here
  // Wait for all of them even when one failed: each is still using our buffers.
  std::vector<std::future<void>> jobs = std::move(grad_jobs_);
  grad_jobs_.clear();
  WaitTimer timer(group_.wait_times().reduce_scatter_s);
  std::exception_ptr first;
  for (std::future<void>& f : jobs) {
    try {
      const WatchdogScope watch("FSDP reduce-scatter wait of '" + name_ + "'", -1, "");
      f.get();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

void FlatShard::zero_grads() {
  wait_grads();
  grads_.fill_zero();
}

void FlatShard::all_reduce_grads(Communicator& dp, bool mean) {
  RA_CHECK(&dp != &group_.comm(),
           "FSDP '{}': the dp all-reduce needs the dp communicator, not the FSDP group's", name_);
  RA_CHECK(dp.device() == device(), "FSDP '{}': the dp communicator '{}' moves {} memory", name_,
           dp.name(), device_name(dp.device()));
  wait_grads();
  float* g = grads_.data<float>();
  const int64_t n = layout_.shard_numel;
  {
    group_.backend().synchronize();
    WaitTimer timer(group_.wait_times().dp_all_reduce_s);
    dp.all_reduce(g, size_t(n), DType::F32, ReduceOp::Sum);
  }
  if (mean && dp.size() > 1) group_.backend().scale(g, n, float(1.0 / double(dp.size())));
}

void FlatShard::set_no_decay(std::span<const IndexRange> full_ranges) {
  for (const IndexRange& r : full_ranges)
    RA_CHECK(r.end <= layout_.numel, "FSDP '{}': no-decay range [{}, {}) exceeds {} elements",
             name_, r.begin, r.end, layout_.numel);
  no_decay_local_ = localize_ranges(full_ranges, layout_.shard_begin(), layout_.shard_numel);
}

AdamWState& FlatShard::optimizer_state() {
  if (!opt_.m.defined()) opt_ = AdamWState::zeros(layout_.shard_numel, device());
  return opt_;
}

void FlatShard::adamw_step(const AdamWConfig& cfg, int64_t step, double lr) {
  wait_full();
  wait_grads();
  ringattn::adamw_step(group_.backend(), cfg, params_, grads_, optimizer_state(), step, lr,
                       no_decay_local_);
}

GradNormResult clip_grad_norm(std::span<FlatShard* const> shards, double max_norm,
                              Communicator* host_group) {
  RA_CHECK(!shards.empty(), "clip_grad_norm: no FSDP shards");
  FsdpGroup& group = shards.front()->group();
  Backend& be = group.backend();
  for (FlatShard* s : shards) {
    RA_CHECK(&s->group() == &group, "clip_grad_norm: shard '{}' belongs to another FSDP group",
             s->name());
    s->wait_grads();
  }
  group.synchronize();
  // The formulas of model/optim/clip.h, with the sums and the scaling on the backend: shards in
  // order, the real elements of each (the padding is zero and stays so).
  double local_sq = 0;
  for (FlatShard* s : shards)
    local_sq += be.sum_squares(s->grads().data<float>(), s->layout().shard_valid());
  GradNormResult r;
  r.norm = global_norm_from_sq(local_sq, host_group ? host_group : &group.comm());
  r.finite = std::isfinite(r.norm);
  if (!r.finite || max_norm <= 0) return r;
  const double scale = max_norm / (r.norm + 1e-6);
  if (scale >= 1) return r;
  r.scale = scale;
  for (FlatShard* s : shards)
    be.scale_f64(s->grads().data<float>(), s->layout().shard_valid(), scale);
  return r;
}

}  // namespace ringattn
