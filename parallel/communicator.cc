#include "parallel/communicator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace sy {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

namespace {

// "line 12: 'a' on rank 0, 'b' on rank 3", so a config mismatch points at the field.
std::string first_difference(const std::string& a, const std::string& b, int rank_b) {
  std::vector<absl::string_view> lines_a = absl::StrSplit(a, '\n');
  std::vector<absl::string_view> lines_b = absl::StrSplit(b, '\n');
  size_t n = std::max(lines_a.size(), lines_b.size());
  auto shown = [](const std::vector<absl::string_view>& lines, size_t i) {
    if (i >= lines.size()) return std::string("(end)");
    absl::string_view line = lines[i].substr(0, 160);
    return absl::StrCat("'", line, "'");
  };
  for (size_t i = 0; i < n; ++i) {
    if (i < lines_a.size() && i < lines_b.size() && lines_a[i] == lines_b[i]) continue;
    return absl::StrCat("first difference at line ", i + 1, ": ", shown(lines_a, i), " on rank 0, ",
                        shown(lines_b, i), " on rank ", rank_b);
  }
  return "they differ";
}

}  // namespace

absl::Status check_same_on_all_ranks(Communicator& comm, const std::string& what,
                                     const std::string& value) {
  std::vector<std::string> all = comm.all_gather_host(value);
  std::vector<int> differ;
  for (int r = 1; r < static_cast<int>(all.size()); ++r) {
    if (all[r] != all[0]) differ.push_back(r);
  }
  if (differ.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("ranks disagree on ", what, ": rank", differ.size() > 1 ? "s " : " ",
                   absl::StrJoin(differ, ", "), " of ", all.size(), " differ from rank 0 (",
                   first_difference(all[0], all[differ[0]], differ[0]),
                   "); start every rank with the same arguments and files"));
}

}  // namespace sy
