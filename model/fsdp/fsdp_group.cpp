#include "model/fsdp/fsdp_group.h"

#include "comm/mpi_env.h"
#include "core/error.h"
#include "core/log.h"
#include "model/fsdp/wait_timer.h"

namespace ringattn {

FsdpGroup::FsdpGroup(Communicator& comm, Mode mode) : FsdpGroup(comm, cpu_backend(), mode) {}

FsdpGroup::FsdpGroup(Communicator& comm, Backend& backend, Mode mode)
    : comm_(comm), backend_(backend) {
  RA_CHECK(comm_.device() == backend_.device(),
           "FSDP group: communicator '{}' moves {} memory but the backend {} computes on {}",
           comm_.name(), device_name(comm_.device()), backend_.name(),
           device_name(backend_.device()));
  const bool threads_ok = MpiEnv::thread_multiple();
  switch (mode) {
    case Mode::Async:
      RA_CHECK(threads_ok,
               "FSDP group: asynchronous prefetch needs MPI_THREAD_MULTIPLE, which this MPI did "
               "not grant (use the synchronous mode)");
      async_ = true;
      break;
    case Mode::Sync:
      async_ = false;
      break;
    case Mode::Auto:
      // With one rank every collective is a local copy: a thread would only add latency.
      async_ = threads_ok && comm_.size() > 1;
      break;
  }
  if (async_) worker_ = std::thread([this] { worker_loop(); });
}

FsdpGroup::~FsdpGroup() {
  try {
    retire(0);
  } catch (const std::exception& e) {
    log::rank_error("FSDP group: finishing its stream-ordered collectives failed: {}", e.what());
  }
  if (!async_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  worker_.join();
}

std::future<void> FsdpGroup::submit(std::function<void()> job) {
  std::packaged_task<void()> task(std::move(job));
  std::future<void> done = task.get_future();
  if (!async_) {
    task();  // packaged_task stores the exception in the future instead of throwing
    return done;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return done;
}

void FsdpGroup::defer(std::unique_ptr<StreamPoint> point, std::function<void()> then) {
  deferred_.push_back({std::move(then), std::move(point)});
}

void FsdpGroup::retire(size_t keep) {
  while (deferred_.size() > keep) {
    Deferred d = std::move(deferred_.front());
    deferred_.pop_front();
    if (d.point) {
      // As FlatShard::wait_full: time only where order() waits on the host (bench train).
      const WaitTimer timer(waits_.reduce_scatter_s);
      d.point->order();
    }
    if (d.then) d.then();
  }
}

void FsdpGroup::synchronize() {
  retire(0);
  if (!async_) return;
  // Jobs run in order, so an empty job's completion means everything before it has run.
  submit([] {}).wait();
}

void FsdpGroup::worker_loop() {
  backend_.bind_thread();  // jobs add reduced gradients through the backend
  for (;;) {
    std::packaged_task<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      // Drain before stopping: the other ranks may already be inside these collectives.
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace ringattn
