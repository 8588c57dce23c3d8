// Routing replay under expert parallelism: a MoE layer with its experts spread over the ranks,
// each rank replaying given routes (global expert ids) for its own tokens, gives the outputs,
// input gradients, parameter gradients and loads of one process replaying every rank's routes
// on all the tokens at once; tokens without routes route themselves on both sides.
#include <vector>

#include "gtest/gtest.h"
#include "models/layers.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::mpi_world;
using testing::rng_for_rank;

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

TEST(ExpertParallelReplay, MatchesOneProcessReplayingTheWholeBatch) {
  Communicator& world = mpi_world();
  const int ranks = world.size(), rank = world.rank();
  const ModelSpec spec = moe_spec(2 * ranks);
  const int64_t b = 2, t = spec.seq_len, n = b * t, d = spec.d_model, k = spec.moe.top_k;

  // Every rank builds all ranks' inputs, gradients and routes, so it can run the reference.
  std::vector<Tensor> xs, dys, routes;
  for (int r = 0; r < ranks; ++r) {
    auto rng = rng_for_rank(r);
    xs.push_back(testing::random_normal({n, d}, rng));
    dys.push_back(testing::random_normal({n, d}, rng));
    Tensor given = testing::random_ints({n, k}, 0, spec.moe.num_experts, rng);
    given.data<int32_t>()[3 * k] = -1;  // token 3 routes itself
    routes.push_back(given);
  }
  Tensor x_all = Tensor::empty({ranks * n, d}), dy_all = Tensor::empty({ranks * n, d});
  Tensor routes_all = Tensor::empty({ranks * n, k}, DType::kI32);
  for (int r = 0; r < ranks; ++r) {
    x_all.rows(r * n, (r + 1) * n).copy_from(xs[r]);
    dy_all.rows(r * n, (r + 1) * n).copy_from(dys[r]);
    routes_all.rows(r * n, (r + 1) * n).copy_from(routes[r]);
  }

  ParamStore ref_store;
  MoeFfn ref(ref_store, "m.", spec);
  ref_store.initialize(5);
  ref.set_routes(routes_all, true, Tensor());
  TokenLayout ref_layout{ranks * b, t, Tensor::zeros({ranks * b, t}, DType::kI32)};
  Tensor ref_out = ref.forward(x_all, ref_layout);
  Tensor ref_dx = ref.backward(dy_all);

  ParamStore store;
  MoeFfn moe(store, "m.", spec, ModelParallel{.world = &world, .ep = &world});
  store.initialize(5);
  Tensor differs = Tensor::zeros({n}, DType::kI32);
  moe.set_routes(routes[rank], true, differs);
  TokenLayout layout{b, t, Tensor::zeros({b, t}, DType::kI32)};
  Tensor out = moe.forward(xs[rank], layout);
  Tensor dx = moe.backward(dys[rank]);

  // The replayed experts were used (the own top-k of the unrouted token kept).
  const std::vector<int32_t> used = moe.routes().to_i32_vector(),
                             given = routes[rank].to_i32_vector();
  for (int64_t i = 0; i < n * k; ++i)
    if (i / k != 3) EXPECT_EQ(used[i], given[i]) << i;
  EXPECT_EQ(used, ref.routes().rows(rank * n, (rank + 1) * n).to_i32_vector());
  EXPECT_EQ(differs.to_i32_vector()[3], 0) << "a token without a route is not compared";

  EXPECT_TRUE(testing::all_close(out, ref_out.rows(rank * n, (rank + 1) * n), 1e-5, 1e-6));
  EXPECT_TRUE(testing::all_close(dx, ref_dx.rows(rank * n, (rank + 1) * n), 1e-5, 1e-6));
  EXPECT_EQ(moe.stats().load, ref.stats().load);
  std::vector<double> terms = {moe.stats().aux_loss, moe.stats().seq_aux_loss, moe.stats().z_loss};
  world.all_reduce_host(terms, ReduceOp::kSum);
  EXPECT_NEAR(terms[0], ref.stats().aux_loss, 1e-6);
  EXPECT_NEAR(terms[1], ref.stats().seq_aux_loss, 1e-6);
  EXPECT_NEAR(terms[2], ref.stats().z_loss, 1e-6);

  // Gradients: dense ones summed over ranks; expert ones are this rank's slice of the whole.
  for (Param* p : store.params()) {
    const Param* r = ref_store.find(p->name);
    ASSERT_NE(r, nullptr) << p->name;
    if (p->group == SyncGroup::kExpert) {
      const int64_t local = p->value.dim(0);
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
