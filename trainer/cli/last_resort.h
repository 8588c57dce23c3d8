#pragma once
// The last line of the switchyard binary: an exception that escaped a subcommand (user errors
// come back as absl::Status; these are library failures, above all std::bad_alloc from a `new`
// or a std::vector that the memory estimate let through) becomes one error line and exit
// status 1, never an abort with a core dump.
#include <functional>
#include <ostream>
#include <string>

#include "absl/strings/string_view.h"

namespace sy {

// What to tell a user whose `command` ("train", "generate", ...; empty: not known) ran out of
// memory, from the std::bad_alloc's what(): the tensor allocator's own message (host or GPU,
// how much, what to lower) when it has one, else that host memory ran out and what to lower.
std::string out_of_memory_message(absl::string_view command, absl::string_view what);

// Runs `body` (the whole command line, e.g. run_cli) and returns its exit status; an exception
// that escapes it is written to `err` as "switchyard: error: ..." and gives 1.
int run_catching_exceptions(absl::string_view command, std::ostream& err,
                            const std::function<int()>& body);

}  // namespace sy
