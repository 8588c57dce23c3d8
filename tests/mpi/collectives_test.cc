// Every collective of MpiCommunicator against the same computation done in one process:
// each rank regenerates every rank's inputs from the seeds and computes the expected result.
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "tests/mpi/mpi_testing.h"

namespace sy {
namespace {

using testing::mpi_world;
using testing::rng_for_rank;

// Fresh values of any dtype: normals for floats, integers of both signs (i64 beyond 32 bits)
// that stay exact as doubles even when summed over the ranks.
Tensor random_tensor(DType dtype, const Shape& shape, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, dtype);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case DType::kF32:
        t.data<float>()[i] = normal(rng);
        break;
      case DType::kBF16:
        t.data<bf16>()[i] = f32_to_bf16(normal(rng));
        break;
      case DType::kI32:
        t.data<int32_t>()[i] = std::uniform_int_distribution<int32_t>(-100000, 100000)(rng);
        break;
      case DType::kI64:
        t.data<int64_t>()[i] =
            std::uniform_int_distribution<int64_t>(-(int64_t{1} << 40), int64_t{1} << 40)(rng);
        break;
    }
  }
  return t;
}

std::vector<double> as_doubles(const Tensor& t) {
  std::vector<double> v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case DType::kF32:
        v[i] = t.data<float>()[i];
        break;
      case DType::kBF16:
        v[i] = bf16_to_f32(t.data<bf16>()[i]);
        break;
      case DType::kI32:
        v[i] = t.data<int32_t>()[i];
        break;
      case DType::kI64:
        v[i] = static_cast<double>(t.data<int64_t>()[i]);
        break;
    }
  }
  return v;
}

// Reductions differ from the double reference only by f32 summation order (f32) or by the
// final rounding to bf16; integers and pure data movement must be exact.
::testing::AssertionResult matches(const Tensor& actual, const std::vector<double>& expected,
                                   bool exact = false) {
  double rtol = 0, atol = 0;
  if (!exact && actual.dtype() == DType::kF32) rtol = 1e-5, atol = 1e-5;
  if (!exact && actual.dtype() == DType::kBF16) rtol = 1.0 / 128, atol = 1e-2;
  std::vector<double> got = as_doubles(actual);
  if (got.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "got " << got.size() << " elements, expected " << expected.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::abs(got[i] - expected[i]) > atol + rtol * std::abs(expected[i])) {
      return ::testing::AssertionFailure()
             << "element " << i << " of " << got.size() << ": got " << got[i] << ", expected "
             << expected[i] << " (" << dtype_name(actual.dtype()) << ", rank " << mpi_world().rank()
             << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<double> reduce(const std::vector<std::vector<double>>& per_rank, ReduceOp op) {
  std::vector<double> out = per_rank[0];
  for (size_t r = 1; r < per_rank.size(); ++r) {
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = op == ReduceOp::kMax ? std::max(out[i], per_rank[r][i]) : out[i] + per_rank[r][i];
    }
  }
  if (op == ReduceOp::kAvg) {
    for (double& v : out) v /= static_cast<double>(per_rank.size());
  }
  return out;
}

std::vector<ReduceOp> ops_for(DType dtype) {
  if (dtype == DType::kF32 || dtype == DType::kBF16) {
    return {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax};
  }
  return {ReduceOp::kSum, ReduceOp::kMax};
}

Shape with_rows(int64_t rows, const Shape& row_shape) {
  Shape shape = {rows};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  return shape;
}

class CollectivesTest : public ::testing::TestWithParam<DType> {};

TEST_P(CollectivesTest, AllReduceMatchesOneProcess) {
  Communicator& world = mpi_world();
  const DType dtype = GetParam();
  uint64_t stream = 0;
  for (ReduceOp op : ops_for(dtype)) {
    for (const Shape& shape : {Shape{1}, Shape{6, 5}, Shape{257}, Shape{0}}) {
      ++stream;
      auto input_of = [&](int r) {
        auto rng = rng_for_rank(r, stream);
        return random_tensor(dtype, shape, rng);
      };
      Tensor t = input_of(world.rank());
      world.all_reduce(t, op);
      std::vector<std::vector<double>> all;
      for (int r = 0; r < world.size(); ++r) all.push_back(as_doubles(input_of(r)));
      EXPECT_TRUE(matches(t, reduce(all, op)))
          << reduce_op_name(op) << " of shape " << shape_str(shape);
    }
  }
}

TEST_P(CollectivesTest, ReduceScatterMatchesOneProcess) {
  Communicator& world = mpi_world();
  const DType dtype = GetParam();
  const int n = world.size();
  uint64_t stream = 0;
  for (ReduceOp op : ops_for(dtype)) {
    for (const Shape& block : {Shape{1}, Shape{3, 4}}) {
      ++stream;
      const int64_t block_numel = block.size() == 1 ? block[0] : block[0] * block[1];
      auto input_of = [&](int r) {
        auto rng = rng_for_rank(r, stream);
        return random_tensor(dtype, {n * block_numel}, rng);
      };
      Tensor out = Tensor::empty(block, dtype);
      world.reduce_scatter(out, input_of(world.rank()), op);
      std::vector<std::vector<double>> all;
      for (int r = 0; r < n; ++r) all.push_back(as_doubles(input_of(r)));
      std::vector<double> full = reduce(all, op);
      std::vector<double> mine(full.begin() + world.rank() * block_numel,
                               full.begin() + (world.rank() + 1) * block_numel);
      EXPECT_TRUE(matches(out, mine)) << reduce_op_name(op) << " of block " << shape_str(block);
    }
  }
}

TEST_P(CollectivesTest, AllGatherIsRankMajor) {
  Communicator& world = mpi_world();
  const DType dtype = GetParam();
  uint64_t stream = 0;
  for (const Shape& shape : {Shape{1}, Shape{2, 3}, Shape{0, 3}}) {
    ++stream;
    auto input_of = [&](int r) {
      auto rng = rng_for_rank(r, stream);
      return random_tensor(dtype, shape, rng);
    };
    Tensor out = Tensor::empty(
        with_rows(world.size() * shape[0], Shape(shape.begin() + 1, shape.end())), dtype);
    world.all_gather(out, input_of(world.rank()));
    std::vector<double> expected;
    for (int r = 0; r < world.size(); ++r) {
      std::vector<double> part = as_doubles(input_of(r));
      expected.insert(expected.end(), part.begin(), part.end());
    }
    EXPECT_TRUE(matches(out, expected, /*exact=*/true)) << "shape " << shape_str(shape);
  }
}

TEST_P(CollectivesTest, BroadcastFromEveryRoot) {
  Communicator& world = mpi_world();
  const DType dtype = GetParam();
  for (int root = 0; root < world.size(); ++root) {
    auto input_of = [&](int r) {
      auto rng = rng_for_rank(r, root);
      return random_tensor(dtype, {5, 7}, rng);
    };
    Tensor t = input_of(world.rank());
    world.broadcast(t, root);
    EXPECT_TRUE(matches(t, as_doubles(input_of(root)), /*exact=*/true)) << "root " << root;
  }
}

// counts[s][d] = rows rank s sends to rank d. Every rank regenerates every sender's tensor,
// so it knows exactly which rows must arrive from whom.
void check_all_to_all_v(DType dtype, const std::vector<std::vector<int64_t>>& counts,
                        const Shape& row_shape, uint64_t stream) {
  Communicator& world = mpi_world();
  const int n = world.size(), me = world.rank();
  int64_t width = 1;
  for (int64_t d : row_shape) width *= d;
  auto send_of = [&](int s) {
    auto rng = rng_for_rank(s, stream);
    int64_t rows = std::accumulate(counts[s].begin(), counts[s].end(), int64_t{0});
    return random_tensor(dtype, with_rows(rows, row_shape), rng);
  };

  std::vector<int64_t> recv_counts = world.exchange_counts(counts[me]);
  for (int s = 0; s < n; ++s) EXPECT_EQ(recv_counts[s], counts[s][me]) << "from rank " << s;
  int64_t recv_rows = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  Tensor recv = Tensor::empty(with_rows(recv_rows, row_shape), dtype);
  world.all_to_all_v(send_of(me), counts[me], recv, recv_counts);

  std::vector<double> expected;
  for (int s = 0; s < n; ++s) {
    std::vector<double> sent = as_doubles(send_of(s));
    int64_t first = std::accumulate(counts[s].begin(), counts[s].begin() + me, int64_t{0});
    expected.insert(expected.end(), sent.begin() + first * width,
                    sent.begin() + (first + counts[s][me]) * width);
  }
  EXPECT_TRUE(matches(recv, expected, /*exact=*/true))
      << "rank " << me << " rows " << shape_str(row_shape);
}

using CountMatrix = std::vector<std::vector<int64_t>>;

// The same matrix on every rank: drawn from a generator every rank seeds alike.
CountMatrix random_counts(int n, int64_t lo, int64_t hi, uint64_t stream) {
  auto rng = rng_for_rank(/*rank=*/-1, stream);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  CountMatrix counts(n, std::vector<int64_t>(n));
  for (auto& row : counts)
    for (int64_t& c : row) c = dist(rng);
  return counts;
}

TEST_P(CollectivesTest, AllToAllVWithUnevenCounts) {
  const int n = mpi_world().size();
  uint64_t stream = 100;
  for (const Shape& row_shape : {Shape{}, Shape{3}, Shape{2, 2}}) {
    check_all_to_all_v(GetParam(), random_counts(n, 0, 5, stream), row_shape, stream);
    ++stream;
  }
  // Larger messages, a few hundred rows per peer.
  check_all_to_all_v(GetParam(), random_counts(n, 0, 300, stream), {16}, stream);
}

TEST_P(CollectivesTest, AllToAllVWithZeroCounts) {
  const int n = mpi_world().size();
  uint64_t stream = 200;
  {
    SCOPED_TRACE("every rank sends nothing to its next peer");
    CountMatrix counts = random_counts(n, 1, 4, ++stream);
    for (int s = 0; s < n; ++s) counts[s][(s + 1) % n] = 0;
    check_all_to_all_v(GetParam(), counts, {3}, stream);
  }
  {
    SCOPED_TRACE("rank 0 receives nothing at all");
    CountMatrix counts = random_counts(n, 1, 4, ++stream);
    for (int s = 0; s < n; ++s) counts[s][0] = 0;
    check_all_to_all_v(GetParam(), counts, {3}, stream);
  }
  {
    SCOPED_TRACE("the last rank sends nothing at all");
    CountMatrix counts = random_counts(n, 1, 4, ++stream);
    for (int64_t& c : counts[n - 1]) c = 0;
    check_all_to_all_v(GetParam(), counts, {3}, stream);
  }
  {
    SCOPED_TRACE("nobody sends anything");
    check_all_to_all_v(GetParam(), CountMatrix(n, std::vector<int64_t>(n, 0)), {3}, ++stream);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CollectivesTest,
                         ::testing::Values(DType::kF32, DType::kI32, DType::kBF16, DType::kI64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

TEST(HostHelpersTest, AllReduceHostMatchesOneProcess) {
  Communicator& world = mpi_world();
  uint64_t stream = 0;
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
    ++stream;
    auto input_of = [&](int r) {
      auto rng = rng_for_rank(r, stream);
      std::normal_distribution<double> dist(0.0, 1e3);
      std::vector<double> v(9);
      for (double& x : v) x = dist(rng);
      return v;
    };
    std::vector<double> values = input_of(world.rank());
    world.all_reduce_host(values, op);
    std::vector<std::vector<double>> all;
    for (int r = 0; r < world.size(); ++r) all.push_back(input_of(r));
    std::vector<double> expected = reduce(all, op);
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_NEAR(values[i], expected[i], 1e-12 * (1 + std::abs(expected[i])))
          << reduce_op_name(op) << " element " << i;
    }
  }
}

TEST(HostHelpersTest, AllGatherHostKeepsEveryRanksString) {
  Communicator& world = mpi_world();
  // Rank 0's string is empty, the others grow with the rank and hold a NUL byte.
  auto string_of = [](int r) {
    return r == 0 ? std::string() : std::string(r * 3, static_cast<char>('a' + r)) + '\0' + "x";
  };
  std::vector<std::string> all = world.all_gather_host(string_of(world.rank()));
  ASSERT_EQ(static_cast<int>(all.size()), world.size());
  for (int r = 0; r < world.size(); ++r) EXPECT_EQ(all[r], string_of(r)) << "rank " << r;
}

TEST(HostHelpersTest, CheckSameOnAllRanksNamesTheRanksThatDiffer) {
  Communicator& world = mpi_world();
  EXPECT_TRUE(check_same_on_all_ranks(world, "the config", "model { d_model: 64 }\n").ok());

  // Odd ranks were "started" with another config.
  std::string config =
      world.rank() % 2 == 1 ? "model {\n  d_model: 32\n}\n" : "model {\n  d_model: 64\n}\n";
  absl::Status status = check_same_on_all_ranks(world, "the config", config);
  ASSERT_FALSE(status.ok());
  std::string message(status.message());
  EXPECT_NE(message.find("ranks disagree on the config"), std::string::npos) << message;
  EXPECT_NE(message.find("line 2: '  d_model: 64' on rank 0, '  d_model: 32' on rank 1"),
            std::string::npos)
      << message;
  // Every rank reports the same error, so every rank can exit with it.
  std::vector<std::string> messages = world.all_gather_host(message);
  for (const std::string& m : messages) EXPECT_EQ(m, message);
}

TEST(SplitTest, GroupsFollowColorAndKey) {
  Communicator& world = mpi_world();
  const int me = world.rank(), n = world.size();
  // Even and odd ranks, each group ordered by descending world rank (key = -rank).
  std::unique_ptr<Communicator> group = world.split(me % 2, -me);
  std::vector<int> members;
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  ASSERT_EQ(group->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[group->rank()], me);

  std::vector<std::string> gathered = group->all_gather_host(std::to_string(me));
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(gathered[i], std::to_string(members[i]));

  Tensor t = Tensor::from_i32({me, 1}, {2});
  group->all_reduce(t, ReduceOp::kSum);
  EXPECT_EQ(t.to_i32_vector(),
            (std::vector<int32_t>{std::accumulate(members.begin(), members.end(), 0),
                                  static_cast<int32_t>(members.size())}));
  group->barrier();
  world.barrier();
}

}  // namespace
}  // namespace sy
