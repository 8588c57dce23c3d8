#include "trainer/cli/last_resort.h"

#include <exception>
#include <new>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sy {

std::string out_of_memory_message(absl::string_view command, absl::string_view what) {
  const std::string running =
      command.empty() ? std::string("switchyard") : absl::StrCat("'switchyard ", command, "'");
  // The GPU allocator's message ("cannot allocate N MiB on cuda:0 ...") says what to lower.
  if (absl::StrContains(what, " on cuda:"))
    return absl::StrCat("out of GPU memory while running ", running, ": ", what);
  std::string text = absl::StrCat("out of host memory while running ", running, ": ");
  constexpr absl::string_view kOwn = "out of host memory ";  // the host tensor allocator's
  if (absl::StartsWith(what, kOwn)) {
    absl::StrAppend(&text, what.substr(kOwn.size()));
  } else {
    absl::StrAppend(&text, "an allocation failed (", what,
                    "); lower train.micro_batch (generate and score: --batch_size) or the "
                    "model's sizes (model.d_model, n_layers, vocab_size, moe.num_experts)");
  }
  absl::StrAppend(&text, ", or run on a machine with more memory");
  return text;
}

int run_catching_exceptions(absl::string_view command, std::ostream& err,
                            const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::bad_alloc& error) {
    // Printing allocates a little; what failed was (almost always) one large request, so
    // this small one still succeeds.
    err << "switchyard: error: " << out_of_memory_message(command, error.what()) << std::endl;
  } catch (const std::exception& error) {
    err << "switchyard: error: " << error.what() << std::endl;
  }
  return 1;
}

}  // namespace sy
