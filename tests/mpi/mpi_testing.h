#pragma once
// Helpers for multi-rank tests (tests/mpi/*_test.cc), which run on every rank of an mpirun
// job with tests/mpi/mpi_main.cc as their main().
#include <cstdint>
#include <random>
#include <string>

#include "parallel/mpi_communicator.h"

namespace sy::testing {

// MPI_COMM_WORLD of the test job.
MpiCommunicator& mpi_world();

// The fewest GPUs any rank of the job sees (0 in a build without CUDA); the same on every
// rank, so that all ranks skip a GPU test together. Collective.
int fewest_gpus_on_any_rank();
// Whether every rank of the job can have a GPU of its own (all ranks on one host); when not,
// `why` says so, for GTEST_SKIP. Collective.
bool gpu_per_rank(std::string* why);

// The generator for rank `rank`'s inputs in the current test, seeded by (test name, rank,
// stream): any rank can regenerate any other rank's inputs and compute the expected result
// of a collective by itself. `stream` tells apart the cases within one test.
std::mt19937_64 rng_for_rank(int rank, uint64_t stream = 0);

}  // namespace sy::testing
