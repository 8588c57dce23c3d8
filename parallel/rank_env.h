#pragma once
// Who am I: the rank, world size and node-local rank a launcher gave this process, read from
// its environment before MPI starts (the local rank picks the GPU).
//
//   Open MPI (mpirun):      OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   Slurm (srun):           SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
//   neither:                a plain single process, rank 0 of 1
//
// Open MPI wins when both are present (mpirun inside a Slurm allocation).
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace sy {

enum class Launcher : uint8_t { kSingle, kOpenMpi, kSlurm };
const char* launcher_name(Launcher launcher);  // "single process", "Open MPI", "Slurm"

struct RankEnv {
  Launcher launcher = Launcher::kSingle;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
};

// The value of an environment variable, or nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// Reads the launcher's variables through `lookup`; a variable that is missing, not a
// non-negative integer, or out of range (rank >= size, size < 1) is an error that names it.
absl::StatusOr<RankEnv> rank_env_from(const EnvLookup& lookup);
absl::StatusOr<RankEnv> rank_env_from_environment();

// An error when the launcher's rank/size disagree with what MPI sees, e.g. switchyard run
// directly in an sbatch script (SLURM_NTASKS=8, but MPI started a world of 1).
absl::Status check_rank_env_matches_world(const RankEnv& env, int world_rank, int world_size);

// This machine's host name ("unknown-host" when it cannot be read).
std::string host_name();

// The one line each rank prints at start-up:
// "rank 1/4 | local 1 | host node07 | device cpu".
std::string banner_line(const RankEnv& env, const std::string& host, const std::string& device);

}  // namespace sy
