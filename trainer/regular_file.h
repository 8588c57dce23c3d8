#pragma once
// Input files must be regular files: opening a FIFO blocks until a writer comes (forever, if
// none does), a directory reads as an error deep inside a parser, and a device never ends.
// Checked with stat, which neither opens nor blocks; symlinks to regular files are fine.
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sy {

// OK for a regular file. Otherwise NotFound (missing) or InvalidArgument naming the file, what
// it is instead (a FIFO, a directory, a character device ...) and `what` the caller reads it
// as ("token shard", "config", "checkpoint file", "prompt file").
absl::Status require_regular_file(const std::string& path, absl::string_view what);

}  // namespace sy
