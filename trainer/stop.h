#pragma once
// The process-wide stop request: SIGTERM, SIGINT and SIGUSR1 (Slurm's warning before its time
// limit) set a flag that every long loop polls. Training and RL write a checkpoint after the
// current step and return; evaluation, checkpoint loading and opening data end early with a
// message. Multi-rank loops agree on it with an all-reduce, since a signal may reach the ranks
// at different moments.
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sy {

void install_stop_signal_handlers();
bool stop_requested();
// Raises or clears the flag as a signal would (tests).
void set_stop_requested_for_testing(bool stop);
// Cancelled, "<what>: stopped by signal", when a stop has been requested; else OK. For loops
// that end with an error rather than a checkpoint (loading, opening data).
absl::Status check_stop(absl::string_view what);

}  // namespace sy
