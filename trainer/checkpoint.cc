#include "trainer/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/json.h"
#include "trainer/regular_file.h"
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

std::string experts_file(int ep_rank) {
  return absl::StrCat("experts-ep", ep_rank, ".safetensors");
}
std::string optimizer_file(int rank) {
  return absl::StrCat("optimizer-rank", rank, ".safetensors");
}

// What this rank writes: the dense parameters on rank 0 (with the experts when they are not
// spread), its experts when it is the first rank of its EP index, its optimizer shard.
absl::Status write_rank_files(const fs::path& dir, const CheckpointLayout& layout,
                              const ParamStore& store, const AdamW* optimizer) {
  const int rank = world_rank(layout);
  const std::map<std::string, std::string> meta = {{"format", std::string(kFormatName)}};
  std::vector<std::pair<std::string, Tensor>> dense, experts;
  for (const Param* p : store.params()) {
    auto& list = p->group == SyncGroup::kExpert && layout.expert_parallel > 1 ? experts : dense;
    list.emplace_back(p->name, p->value.to(Device::cpu()));
  }
  if (rank == 0)
    SY_RETURN_IF_ERROR(save_safetensors((dir / "model.safetensors").string(), dense, meta));
  if (layout.expert_parallel > 1 && rank < layout.expert_parallel) {
    SY_RETURN_IF_ERROR(save_safetensors((dir / experts_file(rank)).string(), experts, meta));
  }
  if (!optimizer) return absl::OkStatus();
  std::vector<std::pair<std::string, Tensor>> moments;
  for (auto& [n, t] : optimizer->state()) moments.emplace_back(n, t.to(Device::cpu()));
  return save_safetensors((dir / optimizer_file(rank)).string(), moments, meta);
}

// Rank 0's part: the manifest, the rename into place, `latest`, and pruning.
absl::Status publish(const fs::path& root, const std::string& name, const CheckpointState& state,
                     const AdamW* optimizer, int keep_last, const CheckpointLayout& layout) {
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

absl::Status save(const std::string& run_dir, const CheckpointState& state,
                  const ParamStore& store, const AdamW* optimizer, int keep_last,
                  const CheckpointLayout& layout) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = step_dir_name(state.step);
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
  SY_RETURN_IF_ERROR(agree(layout, write_rank_files(tmp, layout, store, optimizer)));
  if (world_rank(layout) == 0) status = publish(root, name, state, optimizer, keep_last, layout);
  return agree(layout, status);
}

}  // namespace

absl::Status save_checkpoint(const std::string& run_dir, const CheckpointState& state,
                             const ParamStore& store, const AdamW& optimizer, int keep_last,
                             const CheckpointLayout& layout) {
  return save(run_dir, state, store, &optimizer, keep_last, layout);
}

absl::Status save_weights_checkpoint(const std::string& run_dir, const ParamStore& store) {
  return save(run_dir, CheckpointState{}, store, nullptr, 0, CheckpointLayout{});
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

absl::StatusOr<CheckpointState> load_checkpoint(const std::string& dir, ParamStore& store,
                                                AdamW* optimizer, const CheckpointLayout& layout) {
  const std::string manifest_path = (fs::path(dir) / "manifest.json").string();
  auto text = read_text(manifest_path);
  if (!text.ok()) return checkpoint_error(manifest_path, "missing manifest.json");
  auto manifest = parse_json(*text);
  if (!manifest.ok()) return checkpoint_error(manifest_path, manifest.status().message());
  auto get_int = [&](const Json& obj, absl::string_view key) -> absl::StatusOr<int64_t> {
    const Json* v = obj.is_object() ? obj.find(std::string_view(key.data(), key.size())) : nullptr;
    if (!v || !v->is_int()) {
      return checkpoint_error(manifest_path,
                              absl::StrCat("field '", key, "' is missing or not an integer"));
    }
    return v->as_int();
  };
  const Json* format = manifest->is_object() ? manifest->find("format") : nullptr;
  if (!format || !format->is_string() || format->as_string() != kFormatName) {
    return checkpoint_error(manifest_path, "not a switchyard checkpoint manifest");
  }
  CheckpointState state;
  auto version = get_int(*manifest, "version");
  if (!version.ok()) return version.status();
  if (*version != kFormatVersion) {
    return checkpoint_error(
        manifest_path, absl::StrCat("format version ", *version,
                                    " is not supported (this build reads ", kFormatVersion, ")"));
  }
  auto step = get_int(*manifest, "step");
  auto opt_steps = get_int(*manifest, "optimizer_steps");
  const Json* data = manifest->find("data");
  if (!step.ok()) return step.status();
  if (!opt_steps.ok()) return opt_steps.status();
  if (!data) return checkpoint_error(manifest_path, "field 'data' is missing");
  auto next_index = get_int(*data, "next_index");
  auto epoch = get_int(*data, "epoch");
  auto index = get_int(*data, "index");
  if (!next_index.ok()) return next_index.status();
  if (!epoch.ok()) return epoch.status();
  if (!index.ok()) return index.status();
  state.step = *step;
  state.data = {*next_index, *epoch, *index};
  const Json* seed = manifest->find("seed");
  if (seed && seed->is_string()) state.seed = std::stoull(seed->as_string());

  // The layout must be the one that wrote the checkpoint: the expert shards for the weights,
  // and for the optimizer state also the ranks and ZeRO stage that sharded it. Weights alone
  // also load into a model that holds every expert (expert_parallel 1): the shards, joined.
  auto written_ep = get_int(*manifest, "expert_parallel");
  if (!written_ep.ok()) return written_ep.status();
  const bool join_experts = !optimizer && layout.expert_parallel == 1 && *written_ep > 1;
  std::vector<std::pair<const char*, int64_t>> must_match;
  if (!join_experts) must_match.push_back({"expert_parallel", layout.expert_parallel});
  if (optimizer) {
    must_match.push_back({"world_size", world_size(layout)});
    must_match.push_back({"zero_stage", layout.zero_stage});
  }
  for (auto [key, want] : must_match) {
    auto have = get_int(*manifest, key);
    if (!have.ok()) return have.status();
    if (*have != want) {
      return checkpoint_error(
          manifest_path, absl::StrCat("was written with ", key, " = ", *have, ", this run has ",
                                      want, "; resume with the layout that wrote it"));
    }
  }

  std::vector<SafetensorsFile> files;
  SY_ASSIGN_OR_RETURN(SafetensorsFile model,
                      load_safetensors((fs::path(dir) / "model.safetensors").string()));
  files.push_back(std::move(model));
  if (layout.expert_parallel > 1) {
    const int ep_rank = world_rank(layout) % layout.expert_parallel;
    SY_ASSIGN_OR_RETURN(SafetensorsFile experts,
                        load_safetensors((fs::path(dir) / experts_file(ep_rank)).string()));
    files.push_back(std::move(experts));
  }
  if (join_experts) {
    std::vector<SafetensorsFile> shards;
    for (int i = 0; i < *written_ep; ++i) {
      SY_ASSIGN_OR_RETURN(SafetensorsFile shard,
                          load_safetensors((fs::path(dir) / experts_file(i)).string()));
      shards.push_back(std::move(shard));
    }
    SafetensorsFile joined;
    joined.path = (fs::path(dir) / experts_file(0)).string();
    for (const auto& [name, first] : shards[0].tensors) {
      Shape shape = first.shape();
      for (size_t i = 1; i < shards.size(); ++i) {
        auto it = shards[i].tensors.find(name);
        if (it == shards[i].tensors.end() || it->second.ndim() != first.ndim() ||
            it->second.dtype() != first.dtype()) {
          return checkpoint_error(shards[i].path,
                                  absl::StrCat("has no tensor '", name, "' like ", shards[0].path));
        }
        shape[0] += it->second.dim(0);
      }
      Tensor all = Tensor::empty(shape, first.dtype());
      int64_t row = 0;
      for (const SafetensorsFile& shard : shards) {
        const Tensor& part = shard.tensors.at(name);
        all.rows(row, row + part.dim(0)).copy_from(part);
        row += part.dim(0);
      }
      joined.tensors.emplace(name, std::move(all));
    }
    files.push_back(std::move(joined));
  }
  size_t held = 0;
  for (const SafetensorsFile& f : files) held += f.tensors.size();
  for (Param* p : store.params()) {
    const SafetensorsFile* from = nullptr;
    for (const SafetensorsFile& f : files)
      if (f.tensors.count(p->name)) from = &f;
    if (!from) {
      return checkpoint_error(
          dir, absl::StrCat("has no tensor '", p->name, "', which the configured model needs"));
    }
    SY_RETURN_IF_ERROR(expect_tensor(*from, p->name, p->value.shape(), DType::kF32));
  }
  if (held != store.params().size()) {
    for (const SafetensorsFile& f : files) {
      for (const auto& [name, t] : f.tensors) {
        if (!store.find(name)) {
          return checkpoint_error(
              f.path,
              absl::StrCat("holds tensor '", name, "', which the configured model does not have"));
        }
      }
    }
  }
  for (Param* p : store.params()) {
    for (const SafetensorsFile& f : files) {
      auto it = f.tensors.find(p->name);
      if (it != f.tensors.end()) p->value.copy_from(it->second.to(p->value.device()));
    }
  }
  store.values_changed();

  if (optimizer) {
    auto moments = load_safetensors((fs::path(dir) / optimizer_file(world_rank(layout))).string());
    if (!moments.ok()) return moments.status();
    std::vector<std::pair<std::string, Tensor>> list(moments->tensors.begin(),
                                                     moments->tensors.end());
    auto st = optimizer->load_state(list, *opt_steps);
    if (!st.ok()) return checkpoint_error(moments->path, st.message());
  }
  return state;
}

}  // namespace sy
