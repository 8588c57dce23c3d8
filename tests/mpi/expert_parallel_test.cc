// Expert parallelism against one process: the MoE layer with its experts spread over the
// ranks (each rank routing its own tokens) must give the outputs, input gradients and
// parameter gradients of a single-process layer run on all ranks' tokens at once, with every
// balancing term on; and the dispatcher's two motions must undo each other.
#include <vector>

#include "gtest/gtest.h"
#include "models/layers.h"
#include "parallel/expert_dispatch.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::mpi_world;
using testing::rng_for_rank;

TEST(ExpertDispatcher, MotionsRoundTripWithUnevenAndZeroCounts) {
  Communicator& world = mpi_world();
  const int experts = 2 * world.size();
  ExpertDispatcher dispatcher(world, experts);
  auto rng = rng_for_rank(world.rank());
  std::vector<int64_t> counts(experts);
  for (int e = 0; e < experts; ++e) counts[e] = (e + world.rank()) % 3;  // zeros included
  counts[0] = 0;
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  dispatcher.plan(counts);
  Tensor x = testing::random_normal({rows, 3}, rng);
  Tensor local = dispatcher.to_experts(x);
  // Every rank sends expert e's rows to its owner: the owner holds the sum over senders.
  int64_t expected = 0;
  for (int p = 0; p < world.size(); ++p)
    for (int e = dispatcher.first_local_expert(); e < dispatcher.first_local_expert() + 2; ++e)
      expected += (e + p) % 3 * (e != 0);
  EXPECT_EQ(local.dim(0), expected);
  EXPECT_TRUE(testing::all_close(dispatcher.from_experts(local), x, 0, 0));
}

ModelSpec moe_spec(int experts) {
  ModelSpec s;
  s.vocab_size = 16;
  s.d_model = 8;
  s.n_layers = 1;
  s.n_heads = 2;
  s.n_kv_heads = 2;
  s.seq_len = 5;
  s.init_std = 0.3f;
  s.moe.num_experts = experts;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 6;
  s.moe.num_shared_experts = 1;
  s.moe.normalize_topk = true;
  s.moe.aux_loss_coef = 0.1f;
  s.moe.seq_aux_loss_coef = 0.1f;
  s.moe.z_loss_coef = 0.1f;
  return s;
}

TEST(ExpertParallelMoe, MatchesOneProcessOnTheWholeBatch) {
  Communicator& world = mpi_world();
  const int ranks = world.size(), rank = world.rank();
  const ModelSpec spec = moe_spec(2 * ranks);
  const int64_t b = 2, t = spec.seq_len, n = b * t, d = spec.d_model;

  // Every rank builds all ranks' inputs and output gradients, so it can run the reference.
  std::vector<Tensor> xs, dys;
  for (int r = 0; r < ranks; ++r) {
    auto rng = rng_for_rank(r);
    xs.push_back(testing::random_normal({n, d}, rng));
    dys.push_back(testing::random_normal({n, d}, rng));
  }
  Tensor x_all = Tensor::empty({ranks * n, d}), dy_all = Tensor::empty({ranks * n, d});
  for (int r = 0; r < ranks; ++r) {
    x_all.rows(r * n, (r + 1) * n).copy_from(xs[r]);
    dy_all.rows(r * n, (r + 1) * n).copy_from(dys[r]);
  }

  ParamStore ref_store;
  MoeFfn ref(ref_store, "m.", spec);
  ref_store.initialize(5);
  TokenLayout ref_layout{ranks * b, t, Tensor::zeros({ranks * b, t}, DType::kI32)};
  Tensor ref_out = ref.forward(x_all, ref_layout);
  Tensor ref_dx = ref.backward(dy_all);

  ParamStore store;
  MoeFfn moe(store, "m.", spec, ModelParallel{.world = &world, .ep = &world});
  store.initialize(5);
  TokenLayout layout{b, t, Tensor::zeros({b, t}, DType::kI32)};
  Tensor out = moe.forward(xs[rank], layout);
  Tensor dx = moe.backward(dys[rank]);

  EXPECT_TRUE(testing::all_close(out, ref_out.rows(rank * n, (rank + 1) * n), 1e-5, 1e-6));
  EXPECT_TRUE(testing::all_close(dx, ref_dx.rows(rank * n, (rank + 1) * n), 1e-5, 1e-6));
  // Balancing terms: each rank adds its share; the shares sum to the whole batch's terms.
  std::vector<double> terms = {moe.stats().aux_loss, moe.stats().seq_aux_loss, moe.stats().z_loss};
  world.all_reduce_host(terms, ReduceOp::kSum);
  EXPECT_NEAR(terms[0], ref.stats().aux_loss, 1e-6);
  EXPECT_NEAR(terms[1], ref.stats().seq_aux_loss, 1e-6);
  EXPECT_NEAR(terms[2], ref.stats().z_loss, 1e-6);
  EXPECT_EQ(moe.stats().load, ref.stats().load);

  // Gradients: dense ones summed over ranks; expert ones are this rank's slice of the whole.
  for (Param* p : store.params()) {
    const Param* r = ref_store.find(p->name);
    ASSERT_NE(r, nullptr) << p->name;
    if (p->group == SyncGroup::kExpert) {
      const int64_t local = p->value.dim(0);
      EXPECT_TRUE(
          testing::all_close(p->value, r->value.rows(rank * local, (rank + 1) * local), 0, 0))
          << "initial values of " << p->name << " depend on the layout";
      EXPECT_TRUE(
          testing::all_close(p->grad, r->grad.rows(rank * local, (rank + 1) * local), 1e-4, 1e-6))
          << p->name;
    } else {
      Tensor g = p->grad.clone();
      world.all_reduce(g, ReduceOp::kSum);
      EXPECT_TRUE(testing::all_close(g, r->grad, 1e-4, 1e-6)) << p->name;
    }
  }
}

}  // namespace
}  // namespace sy
