#include "trainer/regular_file.h"

#include <sys/stat.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace sy {

absl::Status require_regular_file(const std::string& path, absl::string_view what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat(what, " ", path, ": cannot open"));
  }
  if (S_ISREG(st.st_mode)) return absl::OkStatus();
  const char* kind = S_ISFIFO(st.st_mode)   ? "a FIFO (named pipe)"
                     : S_ISDIR(st.st_mode)  ? "a directory"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                                            : "not a regular file";
  return absl::InvalidArgumentError(absl::StrCat(
      what, " ", path, " is ", kind, ", not a regular file; give the path of a file on disk"));
}

}  // namespace sy
