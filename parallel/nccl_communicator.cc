#include "parallel/nccl_communicator.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <cstring>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/stream_state.h"
#include "kernels/elementwise.h"
#include "parallel/collective_watchdog.h"

#define SY_NCCL_CHECK(expr)                                                                   \
  do {                                                                                        \
    ncclResult_t sy_nccl_rc_ = (expr);                                                        \
    SY_CHECK(sy_nccl_rc_ == ncclSuccess) << #expr << ": " << ncclGetErrorString(sy_nccl_rc_); \
  } while (0)

namespace sy {

// NCCL calls return once the work is queued; a peer that never joins shows up only as GPU
// work that never completes (and the host waiting for it in a later synchronisation). So
// while the watchdog is on, each queued collective is followed by an event on its stream,
// and the watchdog's thread polls the oldest pending one and NCCL's asynchronous error. A
// ring of events bounds the bookkeeping: when it is full the oldest entry is forgotten and
// the next one, queued behind it on the same stream, still bounds its wait.
struct NcclCommunicator::Impl {
  using Clock = CollectiveWatchdog::Clock;
  static constexpr int kWatched = 64;
  struct Pending {
    cudaEvent_t event = nullptr;
    CollectiveCall call;
    Clock::time_point queued;
  };

  ncclComm_t comm = nullptr;
  int device = 0;
  int rank = 0;
  int size = 1;
  int poller = -1;

  std::mutex mu;  // guards what follows: the main thread records, the watchdog's polls
  std::array<Pending, kWatched> ring;
  bool events_made = false;
  uint64_t queued = 0;     // entries ever recorded
  uint64_t completed = 0;  // entries known complete (or forgotten); the oldest pending is next
  uint64_t calls = 0;
  bool reported = false;

  // After queuing `op` on the ops' stream. Off the watchdog, or while the stream is captured
  // into a CUDA graph (where an event record would become a graph node), nothing is recorded.
  void watch_queued(const char* op, DType dtype, int64_t elements);
  std::optional<CollectiveWatchdog::Expiry> poll(Clock::time_point now, Clock::duration timeout);
  void destroy_events();
};

void NcclCommunicator::Impl::watch_queued(const char* op, DType dtype, int64_t elements) {
  ++calls;
  if (!CollectiveWatchdog::process().enabled()) return;
  cudaStream_t stream = cuda::stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SY_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  std::lock_guard<std::mutex> lock(mu);
  if (!events_made) {
    for (Pending& p : ring)
      SY_CUDA_CHECK(cudaEventCreateWithFlags(&p.event, cudaEventDisableTiming));
    events_made = true;
  }
  if (queued - completed == kWatched) ++completed;
  Pending& p = ring[queued % kWatched];
  SY_CUDA_CHECK(cudaEventRecord(p.event, stream));
  p.call = {op, dtype_name(dtype), elements, rank, size, calls};
  p.queued = Clock::now();
  ++queued;
}

std::optional<CollectiveWatchdog::Expiry> NcclCommunicator::Impl::poll(Clock::time_point now,
                                                                       Clock::duration timeout) {
  std::lock_guard<std::mutex> lock(mu);
  if (reported) return std::nullopt;
  ncclComm_t to_abort = comm;
  auto expire = [&](std::string message) {
    reported = true;
    return CollectiveWatchdog::Expiry{std::move(message), [to_abort] { ncclCommAbort(to_abort); }};
  };
  const std::string where =
      absl::StrCat("rank ", rank, " of a group of ", size, " on cuda:", device);
  ncclResult_t async = ncclSuccess;
  const ncclResult_t rc = ncclCommGetAsyncError(comm, &async);
  if (rc != ncclSuccess) async = rc;
  if (async != ncclSuccess && async != ncclInProgress) {
    return expire(absl::StrCat("NCCL failed on ", where, ": ", ncclGetErrorString(async), " (",
                               ncclGetLastError(comm), "). Ending the job."));
  }
  if (!events_made || completed == queued) return std::nullopt;
  // This thread is the watchdog's own: changing its current GPU disturbs no one.
  if (cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return std::nullopt;
  }
  while (completed < queued) {
    const Pending& p = ring[completed % kWatched];
    const cudaError_t state = cudaEventQuery(p.event);
    if (state == cudaSuccess) {
      ++completed;
      continue;
    }
    // Nothing here captures CUDA graphs; one that does should capture in thread-local mode,
    // or these queries from another thread would invalidate it. A query refused because of
    // a capture says nothing about the collective: look again at the next tick.
    if (state == cudaErrorStreamCaptureImplicit || state == cudaErrorStreamCaptureUnsupported) {
      cudaGetLastError();
      return std::nullopt;
    }
    if (state != cudaErrorNotReady) {
      return expire(absl::StrCat("CUDA error while NCCL ", describe(p.call), " on cuda:", device,
                                 " was pending: ", cudaGetErrorName(state), " (",
                                 cudaGetErrorString(state), "). Ending the job."));
    }
    if (now - p.queued < timeout) return std::nullopt;
    return expire(absl::StrFormat(
        "NCCL %s on cuda:%d has not completed %.1f s after it was queued, past "
        "parallel.collective_timeout_s = %g; a rank of the group is stopped, hung or far behind "
        "(each rank that reached this call reports it: the rank missing from these reports is "
        "the one to look at). Aborting the NCCL communicator and ending the job.",
        describe(p.call), device, std::chrono::duration<double>(now - p.queued).count(),
        std::chrono::duration<double>(timeout).count()));
  }
  return std::nullopt;
}

void NcclCommunicator::Impl::destroy_events() {
  std::lock_guard<std::mutex> lock(mu);
  if (!events_made) return;
  for (Pending& p : ring) cudaEventDestroy(p.event);
  events_made = false;
}

namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op, DType dtype) {
  SY_CHECK(op != ReduceOp::kAvg || dtype == DType::kF32 || dtype == DType::kBF16)
      << "ReduceOp avg is for floating-point data, got " << dtype_name(dtype);
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

// bf16 reduces in f32 and rounds once (the Communicator contract), through f32 copies.
Tensor widened(const Tensor& t) {
  Tensor wide = Tensor::empty(t.shape(), DType::kF32, t.device());
  cast(wide, t);
  return wide;
}

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(std::unique_ptr<Communicator> host,
                                                           Device device) {
  SY_CHECK(device.is_cuda()) << "NcclCommunicator needs a CUDA device, got " << device.str();
  cuda::set_device(device.index);
  ncclUniqueId id;
  static_assert(sizeof(id) % sizeof(int32_t) == 0);
  Tensor bytes = Tensor::zeros({static_cast<int64_t>(sizeof(id) / sizeof(int32_t))}, DType::kI32);
  if (host->rank() == 0) {
    SY_NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(bytes.raw(), &id, sizeof(id));
  }
  host->broadcast(bytes, 0);
  // Some MPIs finish a broadcast only at the next MPI call; ncclCommInitRank makes none, so
  // without this barrier the root could wait in it for ranks that never got the id.
  host->barrier();
  std::memcpy(&id, bytes.raw(), sizeof(id));
  auto impl = std::make_unique<Impl>();
  impl->device = device.index;
  impl->rank = host->rank();
  impl->size = host->size();
  {
    // Initialisation waits for every rank of the group, like a collective.
    CollectiveWatchdog::Scope scope(CollectiveWatchdog::process(),
                                    {"ncclCommInitRank", "", 0, impl->rank, impl->size, 0});
    SY_NCCL_CHECK(ncclCommInitRank(&impl->comm, host->size(), id, host->rank()));
  }
  Impl* watched = impl.get();
  impl->poller = CollectiveWatchdog::process().add_poller(
      [watched](CollectiveWatchdog::Clock::time_point now,
                CollectiveWatchdog::Clock::duration timeout) {
        return watched->poll(now, timeout);
      });
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(std::move(host), device, std::move(impl)));
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<Communicator> host, Device device,
                                   std::unique_ptr<Impl> impl)
    : host_(std::move(host)), device_(device), impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() {
  if (!impl_ || !impl_->comm) return;
  // First, so that no poll runs on the communicator while it goes away.
  CollectiveWatchdog::process().remove_poller(impl_->poller);
  // Collectives still running on the ops' stream use the communicator's buffers: let them
  // finish first (errors are ignored: a destructor has no one to tell).
  if (cuda::try_set_device(device_.index)) cudaStreamSynchronize(cuda::stream());
  impl_->destroy_events();
  ncclCommDestroy(impl_->comm);
}

namespace {

// CUDA tensors handed to a collective must live on the communicator's GPU.
void check_on(Device device, const char* op, const Tensor& a, const Tensor& b) {
  SY_CHECK(a.device() == device && b.device() == device)
      << op << ": tensors on " << a.device().str() << " and " << b.device().str()
      << ", communicator on " << device.str();
}

}  // namespace

void NcclCommunicator::all_reduce(const Tensor& tensor, ReduceOp op) {
  if (!tensor.device().is_cuda()) return host_->all_reduce(tensor, op);
  check_on(device_, "all_reduce", tensor, tensor);
  if (tensor.numel() == 0) return;
  if (tensor.dtype() == DType::kBF16) {
    Tensor wide = widened(tensor);
    all_reduce(wide, op);
    cast(tensor, wide);
    return;
  }
  SY_NCCL_CHECK(ncclAllReduce(tensor.raw(), tensor.raw(), tensor.numel(), nccl_type(tensor.dtype()),
                              nccl_op(op, tensor.dtype()), impl_->comm, cuda::stream()));
  impl_->watch_queued("all_reduce", tensor.dtype(), tensor.numel());
}

void NcclCommunicator::reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) {
  if (!in.device().is_cuda()) return host_->reduce_scatter(out, in, op);
  check_on(device_, "reduce_scatter", out, in);
  SY_CHECK(out.dtype() == in.dtype() && in.numel() == out.numel() * size())
      << "reduce_scatter: in " << shape_str(in.shape()) << " " << dtype_name(in.dtype())
      << " must hold " << size() << " blocks of out " << shape_str(out.shape()) << " "
      << dtype_name(out.dtype());
  if (out.numel() == 0) return;
  if (in.dtype() == DType::kBF16) {
    Tensor wide_out = Tensor::empty(out.shape(), DType::kF32, out.device());
    reduce_scatter(wide_out, widened(in), op);
    cast(out, wide_out);
    return;
  }
  SY_NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), out.numel(), nccl_type(in.dtype()),
                                  nccl_op(op, in.dtype()), impl_->comm, cuda::stream()));
  impl_->watch_queued("reduce_scatter", in.dtype(), in.numel());
}

void NcclCommunicator::all_gather(const Tensor& out, const Tensor& in) {
  if (!in.device().is_cuda()) return host_->all_gather(out, in);
  check_on(device_, "all_gather", out, in);
  SY_CHECK(out.dtype() == in.dtype() && out.numel() == in.numel() * size())
      << "all_gather: out " << shape_str(out.shape()) << " must hold " << size() << " blocks of in "
      << shape_str(in.shape());
  if (in.numel() == 0) return;
  SY_NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), in.numel(), nccl_type(in.dtype()), impl_->comm,
                              cuda::stream()));
  impl_->watch_queued("all_gather", in.dtype(), in.numel());
}

void NcclCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                                    const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  if (!send.device().is_cuda()) return host_->all_to_all_v(send, send_counts, recv, recv_counts);
  check_on(device_, "all_to_all_v", send, recv);
  const int peers = size();
  SY_CHECK(static_cast<int>(send_counts.size()) == peers &&
           static_cast<int>(recv_counts.size()) == peers)
      << "all_to_all_v: " << send_counts.size() << " send and " << recv_counts.size()
      << " recv counts for a group of " << peers;
  SY_CHECK(send.dtype() == recv.dtype()) << "all_to_all_v: send and recv dtypes differ";
  // Bytes per row, from whichever tensor has rows.
  const int64_t send_rows = send.ndim() ? send.dim(0) : 0,
                recv_rows = recv.ndim() ? recv.dim(0) : 0;
  const int64_t row_bytes = send_rows   ? static_cast<int64_t>(send.nbytes()) / send_rows
                            : recv_rows ? static_cast<int64_t>(recv.nbytes()) / recv_rows
                                        : 0;
  int64_t sent = 0, received = 0;
  for (int p = 0; p < peers; ++p) sent += send_counts[p], received += recv_counts[p];
  SY_CHECK(sent == send_rows && received == recv_rows)
      << "all_to_all_v: counts add up to " << sent << " sent / " << received
      << " received rows, tensors have " << send_rows << " / " << recv_rows;
  const char* s = static_cast<const char*>(send.raw());
  char* r = static_cast<char*>(recv.raw());
  SY_NCCL_CHECK(ncclGroupStart());
  int64_t s_off = 0, r_off = 0;
  for (int p = 0; p < peers; ++p) {
    if (send_counts[p] > 0) {
      SY_NCCL_CHECK(ncclSend(s + s_off, send_counts[p] * row_bytes, ncclInt8, p, impl_->comm,
                             cuda::stream()));
    }
    if (recv_counts[p] > 0) {
      SY_NCCL_CHECK(ncclRecv(r + r_off, recv_counts[p] * row_bytes, ncclInt8, p, impl_->comm,
                             cuda::stream()));
    }
    s_off += send_counts[p] * row_bytes;
    r_off += recv_counts[p] * row_bytes;
  }
  SY_NCCL_CHECK(ncclGroupEnd());
  impl_->watch_queued("all_to_all_v", send.dtype(), send.numel());
}

std::vector<int64_t> NcclCommunicator::exchange_counts(const std::vector<int64_t>& send_counts) {
  return host_->exchange_counts(send_counts);
}

void NcclCommunicator::broadcast(const Tensor& tensor, int root) {
  if (!tensor.device().is_cuda()) return host_->broadcast(tensor, root);
  check_on(device_, "broadcast", tensor, tensor);
  SY_CHECK(root >= 0 && root < size()) << "broadcast: root " << root << " in a group of " << size();
  if (tensor.numel() == 0) return;
  SY_NCCL_CHECK(ncclBroadcast(tensor.raw(), tensor.raw(), tensor.numel(), nccl_type(tensor.dtype()),
                              root, impl_->comm, cuda::stream()));
  impl_->watch_queued("broadcast", tensor.dtype(), tensor.numel());
}

void NcclCommunicator::barrier() {
  SY_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  host_->barrier();
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  return create(host_->split(color, key), device_);
}

void NcclCommunicator::all_reduce_host(std::span<double> values, ReduceOp op) {
  host_->all_reduce_host(values, op);
}

std::vector<std::string> NcclCommunicator::all_gather_host(const std::string& value) {
  return host_->all_gather_host(value);
}

}  // namespace sy
#endif  // SWITCHYARD_HAVE_CUDA
