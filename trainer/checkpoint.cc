#include "trainer/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "trainer/crc32c.h"
#include "trainer/json.h"
#include "trainer/progress.h"
#include "trainer/regular_file.h"
#include "trainer/reshard.h"
#include "trainer/safetensors.h"

namespace sy {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = 1;
constexpr std::string_view kFormatName = "switchyard-checkpoint";

std::string step_dir_name(int64_t step) { return absl::StrFormat("step_%08d", step); }

absl::StatusOr<std::string> read_text(const std::string& path) {
  // A FIFO would block the read forever; a missing file keeps the NotFound below.
  std::error_code exists_error;
  if (fs::exists(path, exists_error))
    SY_RETURN_IF_ERROR(require_regular_file(path, "checkpoint file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Status checkpoint_error(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("checkpoint ", path, ": ", what));
}

}  // namespace

namespace {

int world_rank(const CheckpointLayout& layout) { return layout.world ? layout.world->rank() : 0; }
int world_size(const CheckpointLayout& layout) { return layout.world ? layout.world->size() : 1; }

// Every rank learns whether any rank failed: the first failure (by rank) is everyone's result.
absl::Status agree(const CheckpointLayout& layout, const absl::Status& mine) {
  if (!layout.world || layout.world->size() == 1) return mine;
  const std::vector<std::string> all =
      layout.world->all_gather_host(mine.ok() ? std::string() : std::string(mine.message()));
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].empty()) return absl::InternalError(absl::StrCat("rank ", r, ": ", all[r]));
  }
  return absl::OkStatus();
}

absl::Status write_tensors(const fs::path& dir, const CheckpointLayout& layout,
                           const ParamStore& store, const AdamW* optimizer,
                           std::vector<std::string>& written, Progress* progress) {
  const int rank = world_rank(layout);
  const std::map<std::string, std::string> meta = {{"format", std::string(kFormatName)}};
  std::vector<std::pair<std::string, Tensor>> dense, experts;
  for (const Param* p : store.params()) {
    auto& list = p->group == SyncGroup::kExpert && layout.expert_parallel > 1 ? experts : dense;
    list.emplace_back(p->name, p->value.to(Device::cpu()));
  }
  int64_t done = 0;
  auto write = [&](const std::string& name,
                   const std::vector<std::pair<std::string, Tensor>>& tensors) {
    written.push_back(name);
    SY_RETURN_IF_ERROR(save_safetensors((dir / name).string(), tensors, meta));
    for (const auto& [n, t] : tensors) done += static_cast<int64_t>(t.nbytes());
    if (progress) progress->update(done);
    return absl::OkStatus();
  };
  if (rank == 0) SY_RETURN_IF_ERROR(write("model.safetensors", dense));
  if (layout.expert_parallel > 1 && rank < layout.expert_parallel) {
    SY_RETURN_IF_ERROR(write(experts_file_name(rank), experts));
  }
  if (!optimizer) return absl::OkStatus();
  std::vector<std::pair<std::string, Tensor>> moments;
  for (auto& [n, t] : optimizer->state()) moments.emplace_back(n, t.to(Device::cpu()));
  return write(optimizer_file_name(rank), moments);
}

// What this rank writes: the dense parameters on rank 0 (with the experts when they are not
// spread), its experts when it is the first rank of its EP index, its optimizer shard. Returns
// "name bytes crc32c" lines of the files written, for the manifest.
absl::StatusOr<std::string> write_rank_files(const fs::path& dir, const CheckpointLayout& layout,
                                             const ParamStore& store, const AdamW* optimizer,
                                             Progress* progress) {
  std::vector<std::string> written;
  SY_RETURN_IF_ERROR(write_tensors(dir, layout, store, optimizer, written, progress));
  std::string lines;
  // Read back rather than summed while serialising: the manifest vouches for what is on disk.
  for (const std::string& name : written) {
    SY_ASSIGN_OR_RETURN(FileChecksum sum, checksum_file((dir / name).string()));
    absl::StrAppend(&lines, name, " ", sum.bytes, " ", sum.crc32c, "\n");
  }
  return lines;
}

// Rank 0's part: the manifest, the rename into place, `latest`, and pruning.
absl::Status publish(const fs::path& root, const std::string& name, const CheckpointState& state,
                     const AdamW* optimizer, int keep_last, const CheckpointLayout& layout,
                     const std::vector<std::string>& file_lines) {
  const fs::path tmp = root / (name + ".tmp");
  const fs::path final_dir = root / name;
  Json manifest = Json::Object{};
  manifest.set("format", std::string(kFormatName));
  manifest.set("version", kFormatVersion);
  manifest.set("step", state.step);
  manifest.set("optimizer_steps", optimizer ? optimizer->steps_taken() : int64_t{0});
  manifest.set("seed", absl::StrCat(state.seed));  // a string: uint64 need not fit int64
  manifest.set("world_size", world_size(layout));
  manifest.set("expert_parallel", layout.expert_parallel);
  manifest.set("zero_stage", layout.zero_stage);
  Json data = Json::Object{};
  data.set("next_index", state.data.next_index);
  data.set("epoch", state.data.epoch);
  data.set("index", state.data.index);
  manifest.set("data", data);
  // Each file's size and CRC-32C, checked on load.
  Json files = Json::Object{};
  for (const std::string& lines : file_lines) {
    for (absl::string_view line : absl::StrSplit(lines, '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      int64_t bytes = 0, crc = 0;
      SY_CHECK(f.size() == 3 && absl::SimpleAtoi(f[1], &bytes) && absl::SimpleAtoi(f[2], &crc))
          << line;
      Json entry = Json::Object{};
      entry.set("bytes", bytes);
      entry.set("crc32c", crc);
      files.set(f[0], entry);
    }
  }
  manifest.set("files", files);
  const std::string text = to_json(manifest) + "\n";
  std::string_view piece = text;
  SY_RETURN_IF_ERROR(write_file_atomically((tmp / "manifest.json").string(), {&piece, 1}));

  std::error_code ec;
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
  const std::string latest = name + "\n";
  std::string_view latest_piece = latest;
  SY_RETURN_IF_ERROR(write_file_atomically((root / "latest").string(), {&latest_piece, 1}));

  // A save that died (a killed job, a full disk) leaves its step_*.tmp behind; every rank has
  // finished writing this save's files (the all-gather above), so any .tmp left now is such a
  // leftover, and nothing will ever read it.
  {
    std::vector<fs::path> leftovers;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const std::string n = entry.path().filename().string();
      if (entry.is_directory() && n.starts_with("step_") && n.ends_with(".tmp"))
        leftovers.push_back(entry.path());
    }
    for (const fs::path& p : leftovers) fs::remove_all(p, ec);
  }

  // Keep the newest keep_last checkpoints.
  if (keep_last > 0) {
    std::vector<std::string> dirs;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const std::string n = entry.path().filename().string();
      if (entry.is_directory() && n.starts_with("step_") && !n.ends_with(".tmp")) dirs.push_back(n);
    }
    std::sort(dirs.begin(), dirs.end());
    for (size_t i = 0; i + keep_last < dirs.size(); ++i) fs::remove_all(root / dirs[i], ec);
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// The bytes of this rank's tensors: what a load fills, and at most what a save writes (the
// dense tensors are written by rank 0 only), the total a Progress counts toward.
int64_t tensor_bytes(const ParamStore& store, const AdamW* optimizer) {
  int64_t total = 0;
  for (const Param* p : store.params()) total += static_cast<int64_t>(p->value.nbytes());
  if (optimizer)
    for (const auto& [n, t] : optimizer->state()) total += static_cast<int64_t>(t.nbytes());
  return total;
}

absl::Status save(const std::string& run_dir, const CheckpointState& state, const ParamStore& store,
                  const AdamW* optimizer, int keep_last, const CheckpointLayout& layout,
                  std::ostream* progress_out) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = step_dir_name(state.step);
  std::optional<Progress> progress;
  if (progress_out)
    progress.emplace(*progress_out, absl::StrCat("save checkpoint ", name),
                     tensor_bytes(store, optimizer), "bytes", is_terminal(*progress_out));
  const fs::path tmp = root / (name + ".tmp");
  absl::Status status;
  if (world_rank(layout) == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec)
      status =
          absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  }
  SY_RETURN_IF_ERROR(agree(layout, status));
  auto lines = write_rank_files(tmp, layout, store, optimizer, progress ? &*progress : nullptr);
  SY_RETURN_IF_ERROR(agree(layout, lines.status()));
  const std::vector<std::string> all_lines = layout.world && layout.world->size() > 1
                                                 ? layout.world->all_gather_host(*lines)
                                                 : std::vector<std::string>{*lines};
  if (world_rank(layout) == 0)
    status = publish(root, name, state, optimizer, keep_last, layout, all_lines);
  SY_RETURN_IF_ERROR(agree(layout, status));
  if (progress) {
    int64_t bytes = 0;
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(root / name, ec))
      if (f.is_regular_file(ec) && f.path().extension() == ".safetensors")
        bytes += static_cast<int64_t>(f.file_size(ec));
    progress->set_total(0);
    progress->finish(bytes);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status save_checkpoint(const std::string& run_dir, const CheckpointState& state,
                             const ParamStore& store, const AdamW& optimizer, int keep_last,
                             const CheckpointLayout& layout, std::ostream* progress) {
  return save(run_dir, state, store, &optimizer, keep_last, layout, progress);
}

absl::Status save_weights_checkpoint(const std::string& run_dir, const ParamStore& store,
                                     std::ostream* progress) {
  return save(run_dir, CheckpointState{}, store, nullptr, 0, CheckpointLayout{}, progress);
}

absl::StatusOr<std::string> latest_checkpoint(const std::string& run_dir) {
  const fs::path latest = fs::path(run_dir) / "checkpoints" / "latest";
  auto text = read_text(latest.string());
  if (!text.ok() && text.status().code() != absl::StatusCode::kNotFound) return text.status();
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint in ", run_dir, " (", latest.string(),
                                            " is missing); start without --resume"));
  }
  std::string name = *text;
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = fs::path(run_dir) / "checkpoints" / name;
  if (name.empty() || name.find('/') != std::string::npos || !fs::is_directory(dir)) {
    return checkpoint_error(
        latest.string(), absl::StrCat("names '", name, "', which is not a checkpoint directory"));
  }
  return dir.string();
}

namespace {

// The manifest, checked field by field: a damaged or hand-edited one is an error naming the
// file and the field, never a negative step that trains with a negative learning rate.
struct Manifest {
  std::string path;
  int64_t step = 0;
  int64_t optimizer_steps = 0;
  uint64_t seed = 0;
  SavedLayout layout;
  DataPosition data;
  // Absent in checkpoints written before checksums were kept: those still load, unchecked.
  std::optional<std::map<std::string, FileChecksum>> files;
};

absl::StatusOr<Manifest> read_manifest(const std::string& path) {
  auto text = read_text(path);
  if (!text.ok()) return checkpoint_error(path, "missing manifest.json");
  auto json = parse_json(*text);
  if (!json.ok()) return checkpoint_error(path, json.status().message());
  const Json* format = json->is_object() ? json->find("format") : nullptr;
  if (!format || !format->is_string() || format->as_string() != kFormatName) {
    return checkpoint_error(path, "not a switchyard checkpoint manifest");
  }
  auto integer = [&](const Json& obj, const std::string& where, const std::string& key, int64_t lo,
                     int64_t hi) -> absl::StatusOr<int64_t> {
    const std::string field = where + key;
    const Json* v = obj.find(key);
    if (!v || !v->is_int()) {
      return checkpoint_error(path, absl::StrCat("field '", field,
                                                 "' is missing or not an integer; the manifest "
                                                 "is damaged: use another checkpoint"));
    }
    if (v->as_int() < lo || v->as_int() > hi) {
      return checkpoint_error(
          path, absl::StrCat("field '", field, "' is ", v->as_int(), ", outside [", lo, ", ", hi,
                             "]; the manifest is damaged: use another checkpoint"));
    }
    return v->as_int();
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  SY_ASSIGN_OR_RETURN(const int64_t version, integer(*json, "", "version", 0, kMax));
  if (version != kFormatVersion) {
    return checkpoint_error(
        path, absl::StrCat("format version ", version, " is not supported (this build reads ",
                           kFormatVersion, ")"));
  }
  Manifest m;
  m.path = path;
  SY_ASSIGN_OR_RETURN(m.step, integer(*json, "", "step", 0, kMax));
  SY_ASSIGN_OR_RETURN(m.optimizer_steps, integer(*json, "", "optimizer_steps", 0, kMax));
  const Json* seed = json->find("seed");
  if (!seed || !seed->is_string() || seed->as_string().empty() ||
      seed->as_string().find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(seed->as_string(), &m.seed)) {
    return checkpoint_error(
        path,
        "field 'seed' must be a string of decimal digits that fits 64 bits (e.g. \"1234\"); "
        "the manifest is damaged: use another checkpoint");
  }
  constexpr int64_t kMaxRanks = 1 << 20;
  SY_ASSIGN_OR_RETURN(const int64_t world, integer(*json, "", "world_size", 1, kMaxRanks));
  SY_ASSIGN_OR_RETURN(const int64_t ep, integer(*json, "", "expert_parallel", 1, world));
  SY_ASSIGN_OR_RETURN(const int64_t zero, integer(*json, "", "zero_stage", 0, 1));
  if (world % ep != 0) {
    return checkpoint_error(
        path, absl::StrCat("field 'expert_parallel' (", ep, ") does not divide 'world_size' (",
                           world, "); the manifest is damaged"));
  }
  m.layout = {static_cast<int>(world), static_cast<int>(ep), static_cast<int>(zero)};
  const Json* data = json->find("data");
  if (!data || !data->is_object()) return checkpoint_error(path, "field 'data' is missing");
  SY_ASSIGN_OR_RETURN(m.data.next_index, integer(*data, "data.", "next_index", 0, kMax));
  SY_ASSIGN_OR_RETURN(m.data.epoch, integer(*data, "data.", "epoch", 0, kMax));
  SY_ASSIGN_OR_RETURN(m.data.index, integer(*data, "data.", "index", 0, kMax));
  if (const Json* files = json->find("files")) {
    if (!files->is_object()) return checkpoint_error(path, "field 'files' is not an object");
    m.files.emplace();
    for (const auto& [name, entry] : files->as_object()) {
      const std::string where = absl::StrCat("files.", name, ".");
      if (!entry.is_object() || name.empty() || name.find('/') != std::string::npos) {
        return checkpoint_error(
            path, absl::StrCat("field 'files.", name, "' is not {\"bytes\": N, \"crc32c\": N}"));
      }
      SY_ASSIGN_OR_RETURN(const int64_t bytes, integer(entry, where, "bytes", 0, kMax));
      SY_ASSIGN_OR_RETURN(const int64_t crc,
                          integer(entry, where, "crc32c", 0, std::numeric_limits<uint32_t>::max()));
      (*m.files)[name] = {static_cast<uint64_t>(bytes), static_cast<uint32_t>(crc)};
    }
  }
  return m;
}

std::string strip_moment_prefix(const std::string& name) {
  for (std::string_view prefix : {"adam_m.", "adam_v."})
    if (name.starts_with(prefix)) return name.substr(prefix.size());
  return name;
}

// Bytes loaded so far, shown on a Progress when there is one.
struct LoadCount {
  Progress* progress = nullptr;
  int64_t done = 0;
  void add(const Tensor& t) {
    done += static_cast<int64_t>(t.nbytes());
    if (progress) progress->update(done);
  }
};

// The weights: each dense parameter whole from model.safetensors; each stacked expert
// parameter's rows [offset, offset + rows) from the files that hold them in the saved layout.
absl::Status load_weights(const Manifest& m, CheckpointFiles& files, ParamStore& store,
                          int expert_parallel, LoadCount& count) {
  const std::string model_file = "model.safetensors";
  SY_ASSIGN_OR_RETURN(const SafetensorsReader* model, files.open(model_file));
  const SafetensorsReader* experts0 = nullptr;
  if (m.layout.expert_parallel > 1) {
    SY_ASSIGN_OR_RETURN(experts0, files.open(experts_file_name(0)));
  }
  // Nothing the model lacks: a tensor left over means the config is not the one that wrote it.
  for (const SafetensorsReader* f : {model, experts0}) {
    if (!f) continue;
    for (const std::string& name : f->names()) {
      const Param* p = store.find(name);
      // Under expert parallelism the experts are in their shards only, the rest in the model.
      if (!p || (experts0 && (f == experts0) != (p->group == SyncGroup::kExpert))) {
        return checkpoint_error(
            f->path(),
            absl::StrCat("holds tensor '", name, "', which the configured model does not have"));
      }
    }
  }
  for (Param* p : store.params()) {
    const bool stacked = p->group == SyncGroup::kExpert;
    const SafetensorsReader* from = stacked && experts0 ? experts0 : model;
    if (!from->contains(p->name)) {
      return checkpoint_error(from->path(), absl::StrCat("has no tensor '", p->name,
                                                         "', which the configured model needs"));
    }
    if (from->stored_dtype(p->name) != "F32") {
      return checkpoint_error(
          from->path(), absl::StrCat("tensor '", p->name, "' is ", from->stored_dtype(p->name),
                                     ", a checkpoint's weights are F32"));
    }
    const Shape& saved = from->shape(p->name);
    if (!stacked) {
      if (saved != p->value.shape()) {
        return checkpoint_error(from->path(),
                                absl::StrCat("tensor '", p->name, "' has shape ", shape_str(saved),
                                             ", the config expects ", shape_str(p->value.shape())));
      }
      SY_ASSIGN_OR_RETURN(Tensor t, files.read(model_file, p->name));
      p->value.copy_from(t.to(p->value.device()));
      count.add(p->value);
      continue;
    }
    // Experts: the same per-expert shape, and as many experts in all as the config has.
    const int64_t rows = p->value.dim(0);
    const int64_t experts = saved.empty() ? 0 : saved[0] * m.layout.expert_parallel;
    Shape want = p->value.shape();
    want[0] = saved.empty() ? 0 : saved[0];
    if (saved.size() != want.size() || experts != rows * expert_parallel ||
        !std::equal(saved.begin() + 1, saved.end(), want.begin() + 1)) {
      Shape all = p->value.shape();
      all[0] = rows * expert_parallel;
      return checkpoint_error(
          from->path(), absl::StrCat("tensor '", p->name, "' has shape ", shape_str(saved), " (",
                                     experts, " experts in all over ", m.layout.expert_parallel,
                                     " expert-parallel ranks), the config expects ", shape_str(all),
                                     " in all (moe.num_experts, the expert widths)"));
    }
    const int64_t begin = p->expert_offset;
    SY_ASSIGN_OR_RETURN(
        Tensor t,
        files.read_rows(p->name, expert_weight_pieces(m.layout, experts, begin, begin + rows),
                        begin, begin + rows));
    p->value.copy_from(t.to(p->value.device()));
    count.add(p->value);
  }
  store.values_changed();
  return absl::OkStatus();
}

// The moments this rank updates, gathered from whichever saved shards hold them: the rank's own
// when the layout is the one that wrote them, else any rank's copy (the copies of replicated
// moments are the same bits: every replica applies the same update to the same gradients).
absl::Status load_optimizer(const Manifest& m, CheckpointFiles& files, ParamStore& store,
                            AdamW& optimizer, int rank, int expert_parallel, LoadCount& count) {
  const SavedLayout& saved = m.layout;
  auto holds = [&](int r, const std::string& name) -> absl::StatusOr<bool> {
    SY_ASSIGN_OR_RETURN(const SafetensorsReader* f, files.open(optimizer_file_name(r)));
    return f->contains(name);
  };
  std::vector<std::pair<std::string, Tensor>> loaded;
  for (const auto& [name, mine] : optimizer.state()) {
    const Param* p = store.find(strip_moment_prefix(name));
    SY_CHECK(p != nullptr) << "optimizer state " << name << " of no parameter";
    if (p->group != SyncGroup::kExpert) {
      std::vector<int> order = {rank < saved.world_size ? rank : 0};
      for (int r = 0; r < saved.world_size; ++r)
        if (r != order[0]) order.push_back(r);
      int found = -1;
      for (int r : order) {
        SY_ASSIGN_OR_RETURN(bool has, holds(r, name));
        if (has) {
          found = r;
          break;
        }
      }
      if (found < 0) {
        return checkpoint_error(files.dir(),
                                absl::StrCat("no optimizer-rank<r> file holds '", name,
                                             "', which the configured optimizer needs"));
      }
      const std::string file = optimizer_file_name(found);
      SY_ASSIGN_OR_RETURN(const SafetensorsReader* f, files.open(file));
      if (f->shape(name) != p->value.shape()) {
        return checkpoint_error(
            f->path(), absl::StrCat("tensor '", name, "' has shape ", shape_str(f->shape(name)),
                                    ", the config expects ", shape_str(p->value.shape())));
      }
      SY_ASSIGN_OR_RETURN(Tensor t, files.read(file, name));
      loaded.emplace_back(name, std::move(t));
      count.add(mine);
      continue;
    }
    // A stacked expert moment: rows of the EP indices of the saved layout that overlap ours.
    const int64_t rows = p->value.dim(0), begin = p->expert_offset, end = begin + rows;
    const int64_t per = rows * expert_parallel / saved.expert_parallel;
    std::vector<RowPiece> pieces;
    for (int i = static_cast<int>(begin / per); i * per < end; ++i) {
      int found = -1;
      for (int r : saved_ranks_of_ep_index(saved, i, rank)) {
        SY_ASSIGN_OR_RETURN(bool has, holds(r, name));
        if (has) {
          found = r;
          break;
        }
      }
      if (found < 0) {
        return checkpoint_error(
            files.dir(), absl::StrCat("no optimizer-rank<r> file of expert-parallel index ", i,
                                      " holds '", name, "', which the configured optimizer needs"));
      }
      pieces.push_back({optimizer_file_name(found), i * per, per});
    }
    SY_ASSIGN_OR_RETURN(Tensor t, files.read_rows(name, pieces, begin, end));
    loaded.emplace_back(name, std::move(t));
    count.add(mine);
  }
  absl::Status st = optimizer.load_state(loaded, m.optimizer_steps);
  if (!st.ok()) return checkpoint_error(files.dir(), st.message());
  return absl::OkStatus();
}

// Every rank learns whether any rank failed; a rank that failed keeps its own error.
absl::Status agree_keep_mine(const CheckpointLayout& layout, const absl::Status& mine) {
  if (!layout.world || layout.world->size() == 1) return mine;
  absl::Status all = agree(layout, mine);
  return mine.ok() ? all : mine;
}

absl::StatusOr<CheckpointState> load_on_this_rank(const std::string& dir, ParamStore& store,
                                                  AdamW* optimizer, const CheckpointLayout& layout,
                                                  LoadCount& count) {
  SY_ASSIGN_OR_RETURN(const Manifest m, read_manifest((fs::path(dir) / "manifest.json").string()));
  CheckpointState state;
  state.step = m.step;
  state.seed = m.seed;
  state.data = m.data;
  // One process holds every expert, whatever expert_parallel says.
  const int expert_parallel = layout.world ? layout.expert_parallel : 1;
  CheckpointFiles files(dir, m.files ? &*m.files : nullptr);
  SY_RETURN_IF_ERROR(load_weights(m, files, store, expert_parallel, count));
  if (optimizer) {
    SY_RETURN_IF_ERROR(
        load_optimizer(m, files, store, *optimizer, world_rank(layout), expert_parallel, count));
    SY_ASSIGN_OR_RETURN(state.data.index, shard_index_for_world(m.data.index, m.layout.world_size,
                                                                world_size(layout), m.path));
  }
  return state;
}

}  // namespace

absl::StatusOr<CheckpointState> load_checkpoint(const std::string& dir, ParamStore& store,
                                                AdamW* optimizer, const CheckpointLayout& layout,
                                                std::ostream* progress_out) {
  std::optional<Progress> progress;
  if (progress_out)
    progress.emplace(*progress_out, absl::StrCat("load ", dir), tensor_bytes(store, optimizer),
                     "bytes", is_terminal(*progress_out));
  LoadCount count{.progress = progress ? &*progress : nullptr};
  auto state = load_on_this_rank(dir, store, optimizer, layout, count);
  SY_RETURN_IF_ERROR(agree_keep_mine(layout, state.status()));
  if (progress) progress->finish(count.done);
  return state;
}

}  // namespace sy
