#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "parallel/rank_env.h"

namespace sy {
namespace {

// MPI counts are int: larger transfers are split into chunks where the collective allows it
// (all_reduce, broadcast) and refused with a check everywhere else.
constexpr int64_t kMaxMpiCount = INT_MAX;

// The MPI type that moves one element. bf16 has none; it travels as 16-bit words and is
// widened to f32 for reductions.
MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kBF16:
      return MPI_UINT16_T;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
  }
  SY_CHECK(false) << "no MPI type for dtype " << static_cast<int>(dtype);
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM;  // kAvg is a sum, then a division
}

bool is_float(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

int64_t row_width(const Tensor& t) {
  int64_t width = 1;
  for (int i = 1; i < t.ndim(); ++i) width *= t.shape()[i];
  return width;
}

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void divide_(const Tensor& t, int divisor) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] /= static_cast<float>(divisor);
}

int checked_count(int64_t count, const std::string& where, const char* what) {
  SY_CHECK(count <= kMaxMpiCount)
      << where << what << " " << count
      << " exceeds INT_MAX, the largest count MPI takes; split the transfer";
  return static_cast<int>(count);
}

}  // namespace

bool mpi_active() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

std::string mpi_error_context(int code, const char* call) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  std::string error = MPI_Error_string(code, text, &length) == MPI_SUCCESS
                          ? std::string(text, length)
                          : absl::StrCat("MPI error code ", code);
  int rank = -1, size = 0;
  if (mpi_active()) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  return absl::StrCat(call, " failed on rank ", rank, "/", size, " (host ", host_name(),
                      "): ", error);
}

// --- MpiCommunicator ---------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  SY_CHECK(mpi_active()) << "MpiCommunicator needs MPI: create an MpiRuntime first";
  SY_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  SY_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  // After MPI_Finalize a communicator can no longer be freed; the process is ending anyway.
  if (owned_ && mpi_active()) MPI_Comm_free(&comm_);
}

namespace {

// Names the call and the rank in argument checks, so a mismatch in a 64-rank job says where.
std::string where(const MpiCommunicator& comm, const char* op) {
  return absl::StrCat("[rank ", comm.rank(), "/", comm.size(), "] ", op, ": ");
}

void check_tensor(const MpiCommunicator& comm, const Tensor& t, const char* op, const char* name) {
  SY_CHECK(t.defined()) << where(comm, op) << name << " is an undefined tensor";
  SY_CHECK(t.device().is_cpu()) << where(comm, op) << name << " is on " << t.device().str()
                                << "; the MPI backend moves CPU tensors";
}

void check_reduce(const MpiCommunicator& comm, DType dtype, ReduceOp op, const char* name) {
  SY_CHECK(op != ReduceOp::kAvg || is_float(dtype))
      << where(comm, name) << "avg of a " << dtype_name(dtype)
      << " tensor; averages are defined for f32 and bf16 only";
}

}  // namespace

CollectiveWatchdog::Scope MpiCommunicator::watch(const char* op, const char* dtype,
                                                 int64_t elements) {
  return CollectiveWatchdog::Scope(CollectiveWatchdog::process(),
                                   {op, dtype, elements, rank_, size_, ++calls_});
}

void MpiCommunicator::all_reduce(const Tensor& tensor, ReduceOp op) {
  check_tensor(*this, tensor, "all_reduce", "tensor");
  check_reduce(*this, tensor.dtype(), op, "all_reduce");
  if (tensor.dtype() == DType::kBF16) {
    Tensor wide = tensor.to(DType::kF32);
    all_reduce(wide, op);
    tensor.copy_from(wide.to(DType::kBF16));
    return;
  }
  char* p = static_cast<char*>(tensor.raw());
  size_t element = dtype_size(tensor.dtype());
  auto scope = watch("all_reduce", dtype_name(tensor.dtype()), tensor.numel());
  for (int64_t done = 0; done < tensor.numel(); done += kMaxMpiCount) {
    int count = static_cast<int>(std::min(tensor.numel() - done, kMaxMpiCount));
    SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + done * element, count, mpi_type(tensor.dtype()),
                               mpi_op(op), comm_));
  }
  if (op == ReduceOp::kAvg) divide_(tensor, size_);
}

void MpiCommunicator::reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) {
  check_tensor(*this, out, "reduce_scatter", "out");
  check_tensor(*this, in, "reduce_scatter", "in");
  check_reduce(*this, in.dtype(), op, "reduce_scatter");
  SY_CHECK(out.dtype() == in.dtype())
      << where(*this, "reduce_scatter") << "out is " << dtype_name(out.dtype()) << ", in is "
      << dtype_name(in.dtype());
  SY_CHECK(in.numel() == out.numel() * size_)
      << where(*this, "reduce_scatter") << "in " << shape_str(in.shape()) << " must hold " << size_
      << " x out " << shape_str(out.shape()) << " elements";
  SY_CHECK(!overlaps(out, in)) << where(*this, "reduce_scatter") << "out and in overlap";
  if (in.dtype() == DType::kBF16) {
    Tensor wide_out = Tensor::empty(out.shape(), DType::kF32);
    reduce_scatter(wide_out, in.to(DType::kF32), op);
    out.copy_from(wide_out.to(DType::kBF16));
    return;
  }
  int count = checked_count(out.numel(), where(*this, "reduce_scatter"), "block of");
  if (count > 0) {
    auto scope = watch("reduce_scatter", dtype_name(in.dtype()), in.numel());
    SY_MPI_CHECK(MPI_Reduce_scatter_block(in.raw(), out.raw(), count, mpi_type(in.dtype()),
                                          mpi_op(op), comm_));
  }
  if (op == ReduceOp::kAvg) divide_(out, size_);
}

void MpiCommunicator::all_gather(const Tensor& out, const Tensor& in) {
  check_tensor(*this, out, "all_gather", "out");
  check_tensor(*this, in, "all_gather", "in");
  SY_CHECK(out.dtype() == in.dtype())
      << where(*this, "all_gather") << "out is " << dtype_name(out.dtype()) << ", in is "
      << dtype_name(in.dtype());
  SY_CHECK(out.numel() == in.numel() * size_)
      << where(*this, "all_gather") << "out " << shape_str(out.shape()) << " must hold " << size_
      << " x in " << shape_str(in.shape()) << " elements";
  SY_CHECK(!overlaps(out, in)) << where(*this, "all_gather") << "out and in overlap";
  int count = checked_count(in.numel(), where(*this, "all_gather"), "block of");
  if (count == 0) return;
  MPI_Datatype type = mpi_type(in.dtype());
  auto scope = watch("all_gather", dtype_name(in.dtype()), in.numel());
  SY_MPI_CHECK(MPI_Allgather(in.raw(), count, type, out.raw(), count, type, comm_));
}

void MpiCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                                   const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  const std::string at = where(*this, "all_to_all_v");
  check_tensor(*this, send, "all_to_all_v", "send");
  check_tensor(*this, recv, "all_to_all_v", "recv");
  SY_CHECK(send.ndim() >= 1 && recv.ndim() >= 1) << at << "send and recv need a row dimension";
  SY_CHECK(send.dtype() == recv.dtype())
      << at << "send is " << dtype_name(send.dtype()) << ", recv is " << dtype_name(recv.dtype());
  const int64_t width = row_width(send);
  SY_CHECK(row_width(recv) == width) << at << "row widths differ: send " << shape_str(send.shape())
                                     << ", recv " << shape_str(recv.shape());
  SY_CHECK(static_cast<int>(send_counts.size()) == size_ &&
           static_cast<int>(recv_counts.size()) == size_)
      << at << "need one count per peer (" << size_ << "), got " << send_counts.size()
      << " send counts and " << recv_counts.size() << " recv counts";

  // Counts and displacements are in rows of one derived type, so the int limit applies to
  // rows rather than elements.
  auto to_ints = [&](const std::vector<int64_t>& counts, const Tensor& t, const char* name,
                     std::vector<int>* ints, std::vector<int>* displs) {
    int64_t offset = 0;
    for (int p = 0; p < size_; ++p) {
      SY_CHECK(counts[p] >= 0) << at << name << " count for peer " << p << " is " << counts[p];
      ints->push_back(checked_count(counts[p], at, name));
      displs->push_back(checked_count(offset, at, name));
      offset += counts[p];
    }
    SY_CHECK(offset == t.dim(0)) << at << name << " counts add up to " << offset
                                 << " rows, but the tensor has " << t.dim(0) << " ("
                                 << shape_str(t.shape()) << ")";
  };
  std::vector<int> sc, sd, rc, rd;
  to_ints(send_counts, send, "send", &sc, &sd);
  to_ints(recv_counts, recv, "recv", &rc, &rd);
  if (width == 0) return;  // rows of no elements: nothing travels (the contract: same on all)

  MPI_Datatype row;
  SY_MPI_CHECK(
      MPI_Type_contiguous(checked_count(width, at, "row width"), mpi_type(send.dtype()), &row));
  SY_MPI_CHECK(MPI_Type_commit(&row));
  auto scope = watch("all_to_all_v", dtype_name(send.dtype()), send.numel());
  SY_MPI_CHECK(MPI_Alltoallv(send.raw(), sc.data(), sd.data(), row, recv.raw(), rc.data(),
                             rd.data(), row, comm_));
  SY_MPI_CHECK(MPI_Type_free(&row));
}

std::vector<int64_t> MpiCommunicator::exchange_counts(const std::vector<int64_t>& send_counts) {
  SY_CHECK(static_cast<int>(send_counts.size()) == size_)
      << where(*this, "exchange_counts") << "need one count per peer (" << size_ << "), got "
      << send_counts.size();
  std::vector<int64_t> recv_counts(size_);
  auto scope = watch("exchange_counts", "i64", size_);
  SY_MPI_CHECK(
      MPI_Alltoall(send_counts.data(), 1, MPI_INT64_T, recv_counts.data(), 1, MPI_INT64_T, comm_));
  return recv_counts;
}

void MpiCommunicator::broadcast(const Tensor& tensor, int root) {
  check_tensor(*this, tensor, "broadcast", "tensor");
  SY_CHECK(root >= 0 && root < size_)
      << where(*this, "broadcast") << "root " << root << " is not a rank of a group of " << size_;
  char* p = static_cast<char*>(tensor.raw());
  size_t element = dtype_size(tensor.dtype());
  auto scope = watch("broadcast", dtype_name(tensor.dtype()), tensor.numel());
  for (int64_t done = 0; done < tensor.numel(); done += kMaxMpiCount) {
    int count = static_cast<int>(std::min(tensor.numel() - done, kMaxMpiCount));
    SY_MPI_CHECK(MPI_Bcast(p + done * element, count, mpi_type(tensor.dtype()), root, comm_));
  }
}

void MpiCommunicator::barrier() {
  auto scope = watch("barrier", "", 0);
  SY_MPI_CHECK(MPI_Barrier(comm_));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  SY_CHECK(color >= 0) << where(*this, "split") << "color " << color << " is negative";
  MPI_Comm group;
  {
    auto scope = watch("split", "", 0);
    SY_MPI_CHECK(MPI_Comm_split(comm_, color, key, &group));
  }
  return std::make_unique<MpiCommunicator>(group, /*owned=*/true);
}

void MpiCommunicator::all_reduce_host(std::span<double> values, ReduceOp op) {
  int count =
      checked_count(static_cast<int64_t>(values.size()), where(*this, "all_reduce_host"), "count");
  if (count == 0) return;
  auto scope = watch("all_reduce_host", "f64", count);
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values.data(), count, MPI_DOUBLE, mpi_op(op), comm_));
  if (op == ReduceOp::kAvg) {
    for (double& v : values) v /= size_;
  }
}

std::vector<std::string> MpiCommunicator::all_gather_host(const std::string& value) {
  const std::string at = where(*this, "all_gather_host");
  int64_t length = static_cast<int64_t>(value.size());
  std::vector<int64_t> lengths(size_);
  auto scope = watch("all_gather_host", "bytes", length);
  SY_MPI_CHECK(MPI_Allgather(&length, 1, MPI_INT64_T, lengths.data(), 1, MPI_INT64_T, comm_));
  std::vector<int> counts, displs;
  int64_t total = 0;
  for (int64_t l : lengths) {
    counts.push_back(checked_count(l, at, "string length"));
    displs.push_back(checked_count(total, at, "total length"));
    total += l;
  }
  std::string all(static_cast<size_t>(total), '\0');
  SY_MPI_CHECK(MPI_Allgatherv(value.data(), counts[rank_], MPI_CHAR, all.data(), counts.data(),
                              displs.data(), MPI_CHAR, comm_));
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) out.push_back(all.substr(displs[r], counts[r]));
  return out;
}

// --- MpiRuntime, fail_all ----------------------------------------------------------------------

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  SY_CHECK(!finalized) << "MPI was already finalized and cannot start again; keep one "
                          "MpiRuntime for the life of the process";
  if (!initialized) {
    int provided = MPI_THREAD_SINGLE;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    SY_CHECK(rc == MPI_SUCCESS) << "MPI_Init_thread failed with code " << rc;
    SY_CHECK(provided >= MPI_THREAD_FUNNELED)
        << "this MPI provides thread level " << provided
        << ", below MPI_THREAD_FUNNELED; build against an MPI with thread support";
    owns_mpi_ = true;
  }
  SY_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, /*owned=*/false);
  CollectiveWatchdog::process().set_world_rank(world_->rank());
}

MpiRuntime::~MpiRuntime() {
  world_.reset();
  if (owns_mpi_ && mpi_active()) MPI_Finalize();
}

void fail_all(const std::string& message) {
  int rank = 0;
  if (mpi_active()) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  } else if (absl::StatusOr<RankEnv> env = rank_env_from_environment(); env.ok()) {
    rank = env->rank;
  }
  const std::string prefix =
      absl::StrCat("switchyard: error: [rank ", rank, "/", host_name(), "] ");
  std::fflush(stdout);
  for (absl::string_view line : absl::StrSplit(message, '\n')) {
    std::string text = absl::StrCat(prefix, line, "\n");
    std::fputs(text.c_str(), stderr);
  }
  std::fflush(stderr);
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

}  // namespace sy
