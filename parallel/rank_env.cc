#include "parallel/rank_env.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace sy {

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kSingle:
      return "single process";
    case Launcher::kOpenMpi:
      return "Open MPI";
    case Launcher::kSlurm:
      return "Slurm";
  }
  return "?";
}

namespace {

struct LauncherVars {
  Launcher launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* set_by;
};

constexpr LauncherVars kLaunchers[] = {
    {Launcher::kOpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "mpirun"},
    {Launcher::kSlurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "srun"},
};

absl::StatusOr<int> read_int(const EnvLookup& lookup, const LauncherVars& vars, const char* name) {
  std::optional<std::string> value = lookup(name);
  if (!value) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " is not set, but ", vars.rank, " is: the ", launcher_name(vars.launcher),
        " environment is incomplete; start switchyard with ", vars.set_by,
        " rather than setting these variables by hand"));
  }
  int parsed = 0;
  if (!absl::SimpleAtoi(*value, &parsed) || parsed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "='", *value, "' is not a non-negative integer; it should be set by ",
                     vars.set_by, " (unset it to run as a single process)"));
  }
  return parsed;
}

}  // namespace

absl::StatusOr<RankEnv> rank_env_from(const EnvLookup& lookup) {
  for (const LauncherVars& vars : kLaunchers) {
    if (!lookup(vars.rank) && !lookup(vars.size)) continue;
    RankEnv env;
    env.launcher = vars.launcher;
    SY_ASSIGN_OR_RETURN(env.rank, read_int(lookup, vars, vars.rank));
    SY_ASSIGN_OR_RETURN(env.size, read_int(lookup, vars, vars.size));
    SY_ASSIGN_OR_RETURN(env.local_rank, read_int(lookup, vars, vars.local_rank));
    if (env.size < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(vars.size, "=", env.size, ": a job needs at least one process"));
    }
    if (env.rank >= env.size) {
      return absl::InvalidArgumentError(absl::StrCat(vars.rank, "=", env.rank, " is not below ",
                                                     vars.size, "=", env.size,
                                                     "; ranks count from 0"));
    }
    if (env.local_rank >= env.size) {
      return absl::InvalidArgumentError(absl::StrCat(vars.local_rank, "=", env.local_rank,
                                                     " is not below ", vars.size, "=", env.size,
                                                     "; ranks count from 0"));
    }
    return env;
  }
  return RankEnv{};
}

absl::StatusOr<RankEnv> rank_env_from_environment() {
  return rank_env_from([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (!value) return std::nullopt;
    return std::string(value);
  });
}

absl::Status check_rank_env_matches_world(const RankEnv& env, int world_rank, int world_size) {
  if (env.rank == world_rank && env.size == world_size) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the launcher (", launcher_name(env.launcher), ") says this is rank ", env.rank, " of ",
      env.size, ", but MPI started rank ", world_rank, " of ", world_size,
      "; start every rank through the launcher (mpirun -np N, or srun inside the sbatch "
      "script), and build against the MPI the launcher belongs to"));
}

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "unknown-host";
  return name;
}

std::string banner_line(const RankEnv& env, const std::string& host, const std::string& device) {
  return absl::StrCat("rank ", env.rank, "/", env.size, " | local ", env.local_rank, " | host ",
                      host, " | device ", device);
}

}  // namespace sy
