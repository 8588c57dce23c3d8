#include "trainer/stop.h"

#include <atomic>
#include <csignal>

#include "absl/strings/str_cat.h"

namespace sy {
namespace {

// Lock-free, so the handler may set it (a std::atomic<bool> is, on every platform we build).
std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested.store(true); }

}  // namespace

void install_stop_signal_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
}

bool stop_requested() { return g_stop_requested.load(); }

void set_stop_requested_for_testing(bool stop) { g_stop_requested.store(stop); }

absl::Status check_stop(absl::string_view what) {
  if (!stop_requested()) return absl::OkStatus();
  return absl::CancelledError(absl::StrCat(what, ": stopped by signal"));
}

}  // namespace sy
