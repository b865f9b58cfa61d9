// The MPI communicator (host memory) and its ring exchange.
//
// 16-bit floats are reduced in float32: each piece is widened into a scratch buffer, reduced with
// MPI_FLOAT and rounded back once, so the result does not depend on how many partial sums MPI
// forms (a custom MPI_Op on bf16 would round after every pairwise step). Everything is moved in
// pieces of at most `max_chunk_bytes`, because MPI counts are ints.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "comm/world_ranks.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"

namespace ringattn {

namespace {

bool is_half(DType t) {
  return t == DType::BF16 || t == DType::F16;
}

// The MPI type a reduction runs on (16-bit floats are widened to float first).
MPI_Datatype reduce_type(DType t) {
  switch (t) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::BF16:
    case DType::F16:
      return MPI_FLOAT;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
      return MPI_UINT8_T;
  }
  RA_FAIL("unknown dtype {}", int(t));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  RA_FAIL("unknown reduce op {}", int(op));
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

bool thread_multiple_granted() {
  int provided = MPI_THREAD_SINGLE;
  MPI_CHECK(MPI_Query_thread(&provided));
  return provided >= MPI_THREAD_MULTIPLE;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// The ring. Its own duplicate of the communicator gives it a private matching context, so any
// number of rings (and the collectives) can share the parent without their messages crossing.
// Every message uses one tag: MPI's non-overtaking rule keeps the pieces of one exchange, and
// successive exchanges, in order between a pair of ranks.

class MpiRing final : public RingExchange {
 public:
  MpiRing(MPI_Comm parent, const MpiCommOptions& opt) : chunk_(opt.max_chunk_bytes) {
    MPI_CHECK(MPI_Comm_dup(parent, &comm_));
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
    next_ = (rank_ + 1) % size_;
    prev_ = (rank_ + size_ - 1) % size_;
    prev_world_ = world_ranks_of(comm_, {prev_})[0];
    threaded_ = size_ > 1 && opt.progress_thread && thread_multiple_granted();
    if (threaded_) worker_ = std::thread([this] { worker_loop(); });
  }

  ~MpiRing() override {
    if (in_flight_) {
      try {
        wait();
      } catch (const std::exception& e) {
        log::rank_error("ring exchange failed while its owner was being destroyed: {}", e.what());
      }
    }
    if (worker_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      worker_.join();
    }
    if (comm_ != MPI_COMM_NULL && !mpi_finalized()) MPI_Comm_free(&comm_);
  }

  void start(const void* send, void* recv, size_t bytes) override {
    RA_CHECK(!in_flight_, "RingExchange::start: the previous exchange was not waited for");
    RA_CHECK(bytes == 0 || (send && recv), "RingExchange::start: null buffer for {} bytes", bytes);
    if (size_ == 1 || bytes == 0) {
      if (bytes && send != recv) std::memmove(recv, send, bytes);
      in_flight_ = true;
      trivial_ = true;
      return;
    }
    in_flight_ = true;
    trivial_ = false;
    bytes_moved_ += bytes;
    const Job job{static_cast<const char*>(send), static_cast<char*>(recv), bytes};
    if (threaded_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        job_ = job;
        pending_ = true;
        error_ = nullptr;
        done_.store(false, std::memory_order_relaxed);
      }
      cv_.notify_all();
    } else {
      requests_.clear();
      post(job, requests_);
    }
  }

  bool test() override {
    if (!in_flight_ || trivial_) return true;
    if (threaded_) return done_.load(std::memory_order_acquire);
    int flag = 0;
    MPI_CHECK(MPI_Testall(int(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE));
    return flag != 0;
  }

  void wait() override {
    if (!in_flight_) return;
    in_flight_ = false;
    if (trivial_) return;
    const auto t0 = std::chrono::steady_clock::now();
    // The receive from prev() is what blocks when that rank is gone (sends are buffered).
    const WatchdogScope watch("ring KV exchange wait (receive from the previous rank)",
                              prev_world_);
    std::exception_ptr err;
    if (threaded_) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return done_.load(std::memory_order_relaxed); });
      err = error_;
    } else {
      try {
        MPI_CHECK(MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
      } catch (...) {
        err = std::current_exception();
      }
      requests_.clear();
    }
    wait_seconds_ += seconds_since(t0);
    if (err) std::rethrow_exception(err);
  }

 private:
  struct Job {
    const char* send = nullptr;
    char* recv = nullptr;
    size_t bytes = 0;
  };
  static constexpr int kTag = 0;

  // Posts the receives first so that data arriving early lands in place, then the sends.
  void post(const Job& job, std::vector<MPI_Request>& reqs) const {
    const size_t piece = std::clamp<size_t>(chunk_, 1, INT_MAX);
    const size_t pieces = (job.bytes + piece - 1) / piece;
    reqs.reserve(2 * pieces);
    for (size_t off = 0; off < job.bytes; off += piece) {
      MPI_Request r;
      const int n = int(std::min(piece, job.bytes - off));
      MPI_CHECK(MPI_Irecv(job.recv + off, n, MPI_BYTE, prev_, kTag, comm_, &r));
      reqs.push_back(r);
    }
    for (size_t off = 0; off < job.bytes; off += piece) {
      MPI_Request r;
      const int n = int(std::min(piece, job.bytes - off));
      MPI_CHECK(MPI_Isend(job.send + off, n, MPI_BYTE, next_, kTag, comm_, &r));
      reqs.push_back(r);
    }
  }

  // The progress thread: sleeps on the condition variable until start() hands it a job, then
  // sits in MPI_Waitall, which is what makes MPI move the data while the caller computes.
  void worker_loop() {
    std::vector<MPI_Request> reqs;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || pending_; });
      if (!pending_) return;  // stop_ with nothing left to do
      const Job job = job_;
      pending_ = false;
      lock.unlock();
      std::exception_ptr err;
      try {
        reqs.clear();
        post(job, reqs);
        MPI_CHECK(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      error_ = err;
      done_.store(true, std::memory_order_release);
      cv_.notify_all();
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int prev_world_ = -1;  // world rank of prev(), for the watchdog
  size_t chunk_;
  bool threaded_ = false;
  bool in_flight_ = false;  // start() called, wait() not yet
  bool trivial_ = false;    // the exchange in flight needed no messages (N == 1 or 0 bytes)

  // Fallback (no progress thread): the requests of the exchange in flight.
  std::vector<MPI_Request> requests_;

  // Progress thread state; job_, pending_, error_ and stop_ are guarded by mu_.
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  Job job_;
  bool pending_ = false, stop_ = false;
  std::exception_ptr error_;
  std::atomic<bool> done_{false};  // read without the lock by test()
};

// ---------------------------------------------------------------------------------------------

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, MpiCommOptions opt) : comm_(comm), opt_(opt) {
    RA_CHECK(comm != MPI_COMM_NULL, "make_mpi_communicator: MPI_COMM_NULL");
    RA_CHECK(opt_.max_chunk_bytes >= 1, "MpiCommOptions::max_chunk_bytes must be >= 1");
    opt_.max_chunk_bytes = std::min<size_t>(opt_.max_chunk_bytes, INT_MAX);
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
    group_ = group_text(world_ranks_of(comm_));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }
  std::string name() const override { return fmt::format("mpi ({} ranks)", size_); }

  void all_reduce(void* buf, size_t count, DType dtype, ReduceOp op) override {
    if (count == 0) return;
    const WatchdogScope watch("all_reduce", -1, group_.c_str());
    const MPI_Op mop = mpi_op(op);
    char* p = static_cast<char*>(buf);
    const size_t es = dtype_size(dtype);
    if (is_half(dtype)) {
      const size_t per = elems_per_call(sizeof(float));
      std::vector<float> wide(std::min(count, per));
      for (size_t off = 0; off < count; off += per) {
        const size_t n = std::min(per, count - off);
        convert_floats(p + off * es, dtype, wide.data(), DType::F32, n);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, wide.data(), int(n), MPI_FLOAT, mop, comm_));
        convert_floats(wide.data(), DType::F32, p + off * es, dtype, n);
      }
      return;
    }
    const MPI_Datatype t = reduce_type(dtype);
    const size_t per = elems_per_call(es);
    for (size_t off = 0; off < count; off += per) {
      const size_t n = std::min(per, count - off);
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * es, int(n), t, mop, comm_));
    }
  }

  // `send` may be recv's own block (recv + rank * count): that is MPI's in-place form.
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    const size_t nb = count * dtype_size(dtype);
    if (nb == 0) return;
    const WatchdogScope watch("all_gather", -1, group_.c_str());
    char* out = static_cast<char*>(recv);
    const char* in = static_cast<const char*>(send);
    const bool in_place = in == out + size_t(rank_) * nb;
    if (nb * size_t(size_) <= opt_.max_chunk_bytes) {
      MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, int(nb), MPI_BYTE, recv, int(nb),
                              MPI_BYTE, comm_));
      return;
    }
    // Too big for one call: gather pieces of every block into scratch, then scatter them into
    // place (recv's blocks are strided by the full block size, which a plain count cannot say).
    const size_t per = std::max<size_t>(1, opt_.max_chunk_bytes / size_t(size_));
    std::vector<char> scratch(per * size_t(size_));
    for (size_t off = 0; off < nb; off += per) {
      const size_t n = std::min(per, nb - off);
      MPI_CHECK(MPI_Allgather(in + off, int(n), MPI_BYTE, scratch.data(), int(n), MPI_BYTE, comm_));
      for (int i = 0; i < size_; ++i) {
        if (in_place && i == rank_) continue;
        std::memcpy(out + size_t(i) * nb + off, scratch.data() + size_t(i) * n, n);
      }
    }
  }

  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op) override {
    if (count == 0) return;
    const WatchdogScope watch("reduce_scatter", -1, group_.c_str());
    const MPI_Op mop = mpi_op(op);
    const MPI_Datatype t = reduce_type(dtype);
    const size_t es = dtype_size(dtype);
    const bool half = is_half(dtype);
    const size_t ws = half ? sizeof(float) : es;  // element size on the wire
    const char* in = static_cast<const char*>(send);
    char* out = static_cast<char*>(recv);
    if (!half && count * size_t(size_) * es <= opt_.max_chunk_bytes) {
      MPI_CHECK(MPI_Reduce_scatter_block(send, recv, int(count), t, mop, comm_));
      return;
    }
    // Pieces: element range [off, off + n) of every rank's block, packed contiguously (and
    // widened for 16-bit floats) so that one MPI_Reduce_scatter_block reduces it.
    const size_t per =
        std::min(count, std::max<size_t>(1, opt_.max_chunk_bytes / (size_t(size_) * ws)));
    std::vector<char> packed(per * size_t(size_) * ws);
    std::vector<float> wide_out(half ? per : 0);
    for (size_t off = 0; off < count; off += per) {
      const size_t n = std::min(per, count - off);
      for (int i = 0; i < size_; ++i) {
        const char* src = in + (size_t(i) * count + off) * es;
        char* dst = packed.data() + size_t(i) * n * ws;
        if (half)
          convert_floats(src, dtype, dst, DType::F32, n);
        else
          std::memcpy(dst, src, n * es);
      }
      void* dst = half ? static_cast<void*>(wide_out.data()) : static_cast<void*>(out + off * es);
      MPI_CHECK(MPI_Reduce_scatter_block(packed.data(), dst, int(n), t, mop, comm_));
      if (half) convert_floats(wide_out.data(), DType::F32, out + off * es, dtype, n);
    }
  }

  void broadcast(void* buf, size_t count, DType dtype, int root) override {
    RA_CHECK(root >= 0 && root < size_, "broadcast: root {} is not a rank of this {}-rank group",
             root, size_);
    const size_t nb = count * dtype_size(dtype);
    const WatchdogScope watch("broadcast", -1, group_.c_str());
    char* p = static_cast<char*>(buf);
    for (size_t off = 0; off < nb; off += opt_.max_chunk_bytes) {
      const size_t n = std::min(opt_.max_chunk_bytes, nb - off);
      MPI_CHECK(MPI_Bcast(p + off, int(n), MPI_BYTE, root, comm_));
    }
  }

  void barrier() override {
    const WatchdogScope watch("barrier", -1, group_.c_str());
    MPI_CHECK(MPI_Barrier(comm_));
  }

  std::unique_ptr<RingExchange> make_ring(Backend* /*compute: synchronous CPU*/) override {
    return std::make_unique<MpiRing>(comm_, opt_);
  }

 private:
  size_t elems_per_call(size_t elem_bytes) const {
    return std::max<size_t>(1, opt_.max_chunk_bytes / elem_bytes);
  }

  MPI_Comm comm_;
  MpiCommOptions opt_;
  int rank_ = 0, size_ = 1;
  std::string group_;  // names the ranks in the watchdog's messages
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, MpiCommOptions options) {
  return std::make_unique<MpiCommunicator>(comm, options);
}

}  // namespace ringattn
