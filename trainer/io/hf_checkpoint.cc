#include "trainer/io/hf_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/flags.h"
#include "trainer/json.h"
#include "trainer/progress.h"
#include "trainer/safetensors.h"

namespace sy {
namespace fs = std::filesystem;
namespace {

// --- Architectures ---------------------------------------------------------------------------
// What differs between the architectures is names and defaults; the table below is shared.
struct Architecture {
  const char* name;        // config.json "architectures"
  const char* model_type;  // config.json "model_type"
  bool moe;
  bool qk_norm;
  // Substituted into the table's patterns: the MoE block's module name and the experts'
  // gate / up / down projections.
  const char* moe_block;
  const char* gate;
  const char* up;
  const char* down;
  int default_head_dim;  // when config.json has none; 0: hidden_size / num_attention_heads
  double default_rope_theta;
  double default_eps;
};

constexpr Architecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", false, false, "", "", "", "", 0, 10000.0, 1e-6},
    {"Qwen3ForCausalLM", "qwen3", false, true, "", "", "", "", 128, 10000.0, 1e-6},
    {"MixtralForCausalLM", "mixtral", true, false, "block_sparse_moe", "w1", "w3", "w2", 0, 1e6,
     1e-5},
    {"Qwen3MoeForCausalLM", "qwen3_moe", true, true, "mlp", "gate_proj", "up_proj", "down_proj",
     128, 10000.0, 1e-6},
};

std::string architecture_names() {
  std::vector<std::string> names;
  for (const Architecture& a : kArchitectures) names.push_back(a.name);
  return absl::StrJoin(names, ", ");
}

const Architecture* find_architecture(std::string_view name) {
  for (const Architecture& a : kArchitectures)
    if (name == a.name) return &a;
  return nullptr;
}

// --- The conversion table --------------------------------------------------------------------
// One row per parameter of ours: its name pattern, and the checkpoint tensors it is made of,
// stacked along the first dimension in that order. "{L}" is the layer; "{E}" (per_expert) an
// expert: our tensor is then [E, ...], expert e made of the parts named with {E} = e. Rows with
// the same `ours` are alternative layouts, tried in order on import; export writes the first.
enum class Where { kModel, kLayer, kDenseLayer, kMoeLayer };
enum class Needs { kAlways, kUntied, kQkNorm };

struct Row {
  Where where;
  Needs needs;
  const char* ours;
  std::vector<const char*> theirs;
  bool per_expert = false;
};

const std::vector<Row>& conversion_table() {
  using enum Where;
  using enum Needs;
  // clang-format off
  static const std::vector<Row> rows = {
      {kModel, kAlways, "embed.weight", {"model.embed_tokens.weight"}},
      {kModel, kAlways, "final_norm.weight", {"model.norm.weight"}},
      {kModel, kUntied, "lm_head.weight", {"lm_head.weight"}},
      {kLayer, kAlways, "layers.{L}.attn_norm.weight", {"model.layers.{L}.input_layernorm.weight"}},
      {kLayer, kAlways, "layers.{L}.attn.wq", {"model.layers.{L}.self_attn.q_proj.weight"}},
      {kLayer, kAlways, "layers.{L}.attn.wk", {"model.layers.{L}.self_attn.k_proj.weight"}},
      {kLayer, kAlways, "layers.{L}.attn.wv", {"model.layers.{L}.self_attn.v_proj.weight"}},
      {kLayer, kAlways, "layers.{L}.attn.wo", {"model.layers.{L}.self_attn.o_proj.weight"}},
      {kLayer, kQkNorm, "layers.{L}.attn.q_norm.weight", {"model.layers.{L}.self_attn.q_norm.weight"}},
      {kLayer, kQkNorm, "layers.{L}.attn.k_norm.weight", {"model.layers.{L}.self_attn.k_norm.weight"}},
      {kLayer, kAlways, "layers.{L}.ffn_norm.weight",
       {"model.layers.{L}.post_attention_layernorm.weight"}},
      {kDenseLayer, kAlways, "layers.{L}.mlp.w13",
       {"model.layers.{L}.mlp.gate_proj.weight", "model.layers.{L}.mlp.up_proj.weight"}},
      {kDenseLayer, kAlways, "layers.{L}.mlp.w2", {"model.layers.{L}.mlp.down_proj.weight"}},
      // The Hub layout: the router, then one tensor per expert and projection.
      {kMoeLayer, kAlways, "layers.{L}.moe.router.weight", {"model.layers.{L}.{moe}.gate.weight"}},
      {kMoeLayer, kAlways, "layers.{L}.moe.experts.w13",
       {"model.layers.{L}.{moe}.experts.{E}.{gate}.weight",
        "model.layers.{L}.{moe}.experts.{E}.{up}.weight"}, true},
      {kMoeLayer, kAlways, "layers.{L}.moe.experts.w2",
       {"model.layers.{L}.{moe}.experts.{E}.{down}.weight"}, true},
      // transformers 5's own modules, as a state dict saved straight from memory holds them:
      // every MoE block is "mlp", its experts fused, [E, 2F, D] gate first like ours, and
      // [E, D, F].
      {kMoeLayer, kAlways, "layers.{L}.moe.router.weight", {"model.layers.{L}.mlp.gate.weight"}},
      {kMoeLayer, kAlways, "layers.{L}.moe.experts.w13", {"model.layers.{L}.mlp.experts.gate_up_proj"}},
      {kMoeLayer, kAlways, "layers.{L}.moe.experts.w2", {"model.layers.{L}.mlp.experts.down_proj"}},
  };
  // clang-format on
  return rows;
}

// Tensors a checkpoint may hold that carry nothing we need: rotary tables older transformers
// saved, and the output head of a tied model (transformers ties it to the embedding on load).
std::vector<std::string> ignored_tensors(const ModelSpec& spec) {
  std::vector<std::string> out;
  for (int l = 0; l < spec.n_layers; ++l)
    out.push_back(absl::StrCat("model.layers.", l, ".self_attn.rotary_emb.inv_freq"));
  if (spec.tie_embeddings) out.push_back("lm_head.weight");
  return out;
}

// One parameter's recipe, the table's patterns filled in.
struct Source {
  std::vector<std::string> parts;  // with "{E}" still in, when per_expert
  bool per_expert = false;
};
struct Mapping {
  std::vector<Source> sources;  // alternatives, the Hub layout first
};

std::string expert_name(const std::string& pattern, int64_t e) {
  return absl::StrReplaceAll(pattern, {{"{E}", absl::StrCat(e)}});
}

// Our parameter names -> how to build them, for this model in this architecture.
std::map<std::string, Mapping> mappings_for(const ModelSpec& spec, const Architecture& arch) {
  std::map<std::string, Mapping> out;
  auto fill = [&](const char* pattern, int layer) {
    return absl::StrReplaceAll(pattern, {{"{L}", absl::StrCat(layer)},
                                         {"{moe}", arch.moe_block},
                                         {"{gate}", arch.gate},
                                         {"{up}", arch.up},
                                         {"{down}", arch.down}});
  };
  for (const Row& row : conversion_table()) {
    if (row.needs == Needs::kUntied && spec.tie_embeddings) continue;
    if (row.needs == Needs::kQkNorm && !spec.qk_norm) continue;
    std::vector<int> layers;
    if (row.where == Where::kModel) {
      layers = {-1};
    } else {
      for (int l = 0; l < spec.n_layers; ++l) {
        const bool moe = spec.is_moe_layer(l);
        if (row.where == Where::kLayer || (row.where == Where::kMoeLayer) == moe)
          layers.push_back(l);
      }
    }
    for (int l : layers) {
      Source source;
      source.per_expert = row.per_expert;
      for (const char* part : row.theirs) source.parts.push_back(fill(part, l));
      out[fill(row.ours, l)].sources.push_back(std::move(source));
    }
  }
  return out;
}

// --- config.json ------------------------------------------------------------------------------

absl::StatusOr<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<Json> read_json(const std::string& path) {
  SY_ASSIGN_OR_RETURN(std::string text, read_file(path));
  absl::StatusOr<Json> json = parse_json(text);
  if (!json.ok())
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON: ", json.status().message()));
  if (!json->is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  return json;
}

// Typed reads of config.json fields; a wrong type names the file and the field.
class HfConfig {
 public:
  HfConfig(std::string path, Json json) : path_(std::move(path)), json_(std::move(json)) {}
  const std::string& path() const { return path_; }
  const Json* find(const std::string& key) const {
    const Json* v = json_.find(key);
    return v && !v->is_null() ? v : nullptr;
  }
  absl::Status error(const std::string& field, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": field \"", field, "\" ", what));
  }
  absl::StatusOr<int64_t> integer(const std::string& key, std::optional<int64_t> fallback) const {
    const Json* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      return error(key, "is missing; a checkpoint of this architecture needs it");
    }
    if (!v->is_int()) return error(key, absl::StrCat("is ", to_json(*v), ", expected an integer"));
    return v->as_int();
  }
  absl::StatusOr<int64_t> positive(const std::string& key, std::optional<int64_t> fallback) const {
    SY_ASSIGN_OR_RETURN(int64_t v, integer(key, fallback));
    if (v <= 0) return error(key, absl::StrCat("is ", v, ", expected a positive integer"));
    return v;
  }
  absl::StatusOr<double> number(const std::string& key, double fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->is_number()) return error(key, absl::StrCat("is ", to_json(*v), ", expected a number"));
    return v->as_double();
  }
  absl::StatusOr<bool> boolean(const std::string& key, bool fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->is_bool()) return error(key, absl::StrCat("is ", to_json(*v), ", expected true/false"));
    return v->as_bool();
  }
  absl::StatusOr<std::string> string(const std::string& key, std::string fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->is_string()) return error(key, absl::StrCat("is ", to_json(*v), ", expected a string"));
    return v->as_string();
  }

 private:
  std::string path_;
  Json json_;
};

struct HfModel {
  const Architecture* arch = nullptr;
  switchyard::Experiment experiment;
  std::string dtype;  // "float32", "bfloat16", "float16" as config.json says (may be empty)
};

constexpr int32_t kMaxInt32 = 2147483647;

absl::StatusOr<int32_t> fits(const HfConfig& c, const std::string& key, int64_t v) {
  if (v > kMaxInt32) return c.error(key, absl::StrCat("is ", v, ", more than we can hold"));
  return static_cast<int32_t>(v);
}

absl::StatusOr<HfModel> read_hf_model(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  SY_ASSIGN_OR_RETURN(Json json, read_json(path));
  HfConfig c(path, std::move(json));
  HfModel out;

  const Json* archs = c.find("architectures");
  if (!archs || !archs->is_array() || archs->as_array().size() != 1 ||
      !archs->as_array()[0].is_string()) {
    return c.error("architectures",
                   absl::StrCat(archs ? absl::StrCat("is ", to_json(*archs)) : "is missing",
                                "; expected one of [", architecture_names(), "]"));
  }
  out.arch = find_architecture(archs->as_array()[0].as_string());
  if (!out.arch) {
    return c.error("architectures", absl::StrCat("is ", to_json(*archs), ": switchyard converts ",
                                                 architecture_names()));
  }
  const Architecture& a = *out.arch;

  // Options whose other values change the math in ways our model does not compute.
  SY_ASSIGN_OR_RETURN(std::string act, c.string("hidden_act", "silu"));
  if (act != "silu")
    return c.error("hidden_act",
                   absl::StrCat("is \"", act, "\"; only \"silu\" (SwiGLU) is supported"));
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    SY_ASSIGN_OR_RETURN(bool bias, c.boolean(key, false));
    if (bias) return c.error(key, "is true; switchyard's projections have no biases");
  }
  if (c.find("quantization_config"))
    return c.error("quantization_config", "is set; convert an unquantized checkpoint");
  // Sliding-window attention: Qwen models switch it with use_sliding_window; Mixtral's window
  // applies whenever it is set, harmless only when it covers every position.
  SY_ASSIGN_OR_RETURN(int64_t max_positions, c.positive("max_position_embeddings", std::nullopt));
  bool use_window = c.find("sliding_window") != nullptr;
  if (std::string_view(a.model_type).starts_with("qwen3")) {
    SY_ASSIGN_OR_RETURN(use_window, c.boolean("use_sliding_window", false));
  }
  if (use_window) {
    SY_ASSIGN_OR_RETURN(int64_t window, c.integer("sliding_window", max_positions));
    if (window < max_positions) {
      return c.error("sliding_window",
                     absl::StrCat("is ", window, " (below max_position_embeddings = ",
                                  max_positions, "); sliding-window attention is not supported"));
    }
  }
  if (const Json* layer_types = c.find("layer_types"); layer_types && layer_types->is_array()) {
    for (const Json& t : layer_types->as_array()) {
      if (!t.is_string() || t.as_string() != "full_attention")
        return c.error(
            "layer_types",
            absl::StrCat("holds ", to_json(t), "; only \"full_attention\" layers are supported"));
    }
  }
  // RoPE: theta from rope_parameters (transformers 5) or rope_theta; scaled variants refused.
  double theta = a.default_rope_theta;
  SY_ASSIGN_OR_RETURN(theta, c.number("rope_theta", theta));
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const Json* rope = c.find(key);
    if (!rope) continue;
    if (!rope->is_object())
      return c.error(key, absl::StrCat("is ", to_json(*rope), ", expected an object"));
    const Json* type = rope->find("rope_type");
    if (!type) type = rope->find("type");
    if (type && !(type->is_string() && type->as_string() == "default")) {
      return c.error(key,
                     absl::StrCat("has rope_type ", to_json(*type),
                                  "; only the default (unscaled) rotary embedding is supported"));
    }
    const Json* t = rope->find("rope_theta");
    if (t && t->is_number()) theta = t->as_double();
  }
  if (!(theta > 0)) return c.error("rope_theta", absl::StrCat("is ", theta, ", expected > 0"));

  SY_ASSIGN_OR_RETURN(out.dtype, c.string("dtype", ""));
  if (out.dtype.empty()) {
    SY_ASSIGN_OR_RETURN(out.dtype, c.string("torch_dtype", ""));
  }
  if (!out.dtype.empty() && out.dtype != "float32" && out.dtype != "bfloat16" &&
      out.dtype != "float16") {
    return c.error(c.find("dtype") ? "dtype" : "torch_dtype",
                   absl::StrCat("is \"", out.dtype, "\"; expected float32, bfloat16 or float16"));
  }

  switchyard::Experiment& e = out.experiment;
  switchyard::ModelConfig& m = *e.mutable_model();
  SY_ASSIGN_OR_RETURN(int64_t vocab, c.positive("vocab_size", std::nullopt));
  SY_ASSIGN_OR_RETURN(int64_t d, c.positive("hidden_size", std::nullopt));
  SY_ASSIGN_OR_RETURN(int64_t layers, c.positive("num_hidden_layers", std::nullopt));
  SY_ASSIGN_OR_RETURN(int64_t heads, c.positive("num_attention_heads", std::nullopt));
  SY_ASSIGN_OR_RETURN(int64_t kv, c.positive("num_key_value_heads", heads));
  const int64_t implied = d % heads == 0 ? d / heads : 0;
  SY_ASSIGN_OR_RETURN(
      int64_t hd,
      c.positive("head_dim", a.default_head_dim > 0
                                 ? std::optional<int64_t>(a.default_head_dim)
                                 : (implied > 0 ? std::optional<int64_t>(implied) : std::nullopt)));
  if (hd % 2 != 0)
    return c.error("head_dim",
                   absl::StrCat("is ", hd, "; rotary embeddings need an even head_dim"));
  if (heads % kv != 0) {
    return c.error(
        "num_key_value_heads",
        absl::StrCat("is ", kv, ", which does not divide num_attention_heads = ", heads));
  }
  SY_ASSIGN_OR_RETURN(double eps, c.number("rms_norm_eps", a.default_eps));
  SY_ASSIGN_OR_RETURN(bool tied, c.boolean("tie_word_embeddings", false));
  SY_ASSIGN_OR_RETURN(int64_t hidden, c.positive("intermediate_size", std::nullopt));

  if (hd != implied) m.set_head_dim(static_cast<int32_t>(hd));
  SY_ASSIGN_OR_RETURN(int32_t vocab32, fits(c, "vocab_size", vocab));
  SY_ASSIGN_OR_RETURN(int32_t positions32, fits(c, "max_position_embeddings", max_positions));
  m.set_vocab_size(vocab32);
  m.set_d_model(static_cast<int32_t>(d));
  m.set_n_layers(static_cast<int32_t>(layers));
  m.set_n_heads(static_cast<int32_t>(heads));
  m.set_n_kv_heads(static_cast<int32_t>(kv));
  m.set_seq_len(positions32);
  m.set_rope_theta(theta);
  m.set_norm_eps(eps);
  m.set_tie_embeddings(tied);
  m.set_qk_norm(a.qk_norm);

  if (!a.moe) {
    m.set_first_k_dense(static_cast<int32_t>(layers));
    m.set_dense_ffn_hidden(static_cast<int32_t>(hidden));
    return out;
  }
  switchyard::MoeConfig& moe = *e.mutable_moe();
  const bool mixtral = std::string_view(a.model_type) == "mixtral";
  const char* experts_key = c.find("num_experts") ? "num_experts" : "num_local_experts";
  SY_ASSIGN_OR_RETURN(int64_t experts, c.positive(experts_key, std::nullopt));
  SY_ASSIGN_OR_RETURN(int64_t top_k, c.positive("num_experts_per_tok", std::nullopt));
  if (top_k > experts) {
    return c.error("num_experts_per_tok",
                   absl::StrCat("is ", top_k, ", more than the ", experts, " experts"));
  }
  int64_t expert_hidden = hidden;
  if (!mixtral) {
    SY_ASSIGN_OR_RETURN(expert_hidden, c.positive("moe_intermediate_size", std::nullopt));
  }
  // Mixtral always renormalises the chosen experts' softmax weights; Qwen3-MoE when asked.
  bool normalize = true;
  if (!mixtral) {
    SY_ASSIGN_OR_RETURN(normalize, c.boolean("norm_topk_prob", false));
  }
  for (const char* key : {"shared_expert_intermediate_size", "n_shared_experts"}) {
    SY_ASSIGN_OR_RETURN(int64_t shared, c.integer(key, 0));
    if (shared != 0)
      return c.error(key, absl::StrCat("is ", shared, "; shared experts are not part of ", a.name));
  }
  // Qwen3-MoE's dense layers (mlp_only_layers, or those off the decoder_sparse_step grid) must
  // be the leading ones: ours are blocks [0, first_k_dense).
  int64_t first_dense = 0;
  if (!mixtral) {
    SY_ASSIGN_OR_RETURN(int64_t step, c.positive("decoder_sparse_step", 1));
    std::set<int64_t> dense_only;
    if (const Json* only = c.find("mlp_only_layers")) {
      if (!only->is_array()) return c.error("mlp_only_layers", "is not a list of layer indices");
      for (const Json& l : only->as_array()) {
        if (!l.is_int()) return c.error("mlp_only_layers", "is not a list of layer indices");
        dense_only.insert(l.as_int());
      }
    }
    std::vector<bool> dense(layers);
    for (int64_t l = 0; l < layers; ++l) dense[l] = dense_only.count(l) || (l + 1) % step != 0;
    while (first_dense < layers && dense[first_dense]) ++first_dense;
    for (int64_t l = first_dense; l < layers; ++l) {
      if (dense[l]) {
        return c.error(dense_only.count(l) ? "mlp_only_layers" : "decoder_sparse_step",
                       absl::StrCat("makes layer ", l, " dense after MoE layer ", first_dense,
                                    "; switchyard's dense layers must come first"));
      }
    }
  }
  m.set_first_k_dense(static_cast<int32_t>(first_dense));
  if (first_dense > 0) m.set_dense_ffn_hidden(static_cast<int32_t>(hidden));
  moe.set_num_experts(static_cast<int32_t>(experts));
  moe.set_top_k(static_cast<int32_t>(top_k));
  moe.set_expert_hidden(static_cast<int32_t>(expert_hidden));
  moe.set_score_function(switchyard::MoeConfig::SCORE_SOFTMAX);
  moe.set_normalize_topk(normalize);
  SY_ASSIGN_OR_RETURN(double aux, c.number("router_aux_loss_coef", moe.aux_loss_coef()));
  moe.set_aux_loss_coef(aux);
  return out;
}

// --- The checkpoint's tensors ------------------------------------------------------------------

// Every tensor of a checkpoint directory by name, over its one file or its shards; headers
// only until a tensor is read.
class HfTensors {
 public:
  static absl::StatusOr<HfTensors> open(const std::string& dir) {
    HfTensors out;
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single = fs::path(dir) / "model.safetensors";
    std::map<std::string, std::string> weight_map;  // tensor -> file, from the index
    std::vector<std::string> files;
    if (fs::exists(index)) {
      SY_ASSIGN_OR_RETURN(Json json, read_json(index.string()));
      const Json* map = json.find("weight_map");
      if (!map || !map->is_object())
        return absl::InvalidArgumentError(
            absl::StrCat(index.string(), ": no \"weight_map\" object"));
      std::set<std::string> seen;
      for (const auto& [name, file] : map->as_object()) {
        if (!file.is_string() || file.as_string().find('/') != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map entry for '",
                                                         name, "' is not a file name in ", dir));
        }
        weight_map[name] = file.as_string();
        if (seen.insert(file.as_string()).second) files.push_back(file.as_string());
      }
    } else if (fs::exists(single)) {
      files.push_back("model.safetensors");
    } else {
      return absl::NotFoundError(
          absl::StrCat(dir,
                       ": no model.safetensors or model.safetensors.index.json (only safetensors "
                       "checkpoints are read; convert .bin files with transformers first)"));
    }
    for (const std::string& f : files) {
      SY_ASSIGN_OR_RETURN(SafetensorsReader reader,
                          SafetensorsReader::open((fs::path(dir) / f).string()));
      out.readers_.push_back(std::make_unique<SafetensorsReader>(std::move(reader)));
      for (const std::string& name : out.readers_.back()->names()) {
        auto [it, fresh] = out.where_.emplace(name, out.readers_.back().get());
        if (!fresh) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is in both ",
                                                         it->second->path(), " and ",
                                                         out.readers_.back()->path()));
        }
      }
    }
    for (const auto& [name, file] : weight_map) {
      auto it = out.where_.find(name);
      const std::string want = (fs::path(dir) / file).string();
      if (it == out.where_.end() || it->second->path() != want) {
        return absl::InvalidArgumentError(absl::StrCat(
            index.string(), ": tensor '", name, "' should be in ", want, ", which lacks it"));
      }
    }
    return out;
  }

  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  const SafetensorsReader& file(const std::string& name) const { return *where_.at(name); }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, r] : where_) out.push_back(name);
    return out;
  }
  // The tensor as f32, checked against the shape the model expects.
  absl::StatusOr<Tensor> read(const std::string& name, const Shape& want) const {
    const SafetensorsReader& r = file(name);
    if (r.shape(name) != want) {
      return absl::InvalidArgumentError(absl::StrCat(r.path(), ": tensor '", name, "' has shape ",
                                                     shape_str(r.shape(name)),
                                                     ", config.json implies ", shape_str(want)));
    }
    const std::string dtype = r.stored_dtype(name);
    if (dtype != "F32" && dtype != "BF16" && dtype != "F16") {
      return absl::InvalidArgumentError(absl::StrCat(r.path(), ": tensor '", name, "' is ", dtype,
                                                     "; weights must be F32, BF16 or F16"));
    }
    SY_ASSIGN_OR_RETURN(Tensor t, r.read(name));
    return t.dtype() == DType::kF32 ? t : t.to(DType::kF32);
  }

 private:
  std::vector<std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, const SafetensorsReader*> where_;
};

Shape with_first(Shape shape, int64_t first) {
  shape[0] = first;
  return shape;
}
Shape without_first(const Shape& shape) { return Shape(shape.begin() + 1, shape.end()); }

// Every checkpoint name a mapping's source stands for, over all `experts`.
std::vector<std::string> source_names(const Source& s, int64_t experts) {
  std::vector<std::string> out;
  for (const std::string& part : s.parts) {
    if (!s.per_expert) {
      out.push_back(part);
      continue;
    }
    for (int64_t e = 0; e < experts; ++e) out.push_back(expert_name(part, e));
  }
  return out;
}

// Builds `param` (all of it, or its experts [offset, offset + dim 0) when stacked) from the
// first source the checkpoint has in full.
absl::Status fill_param(const HfTensors& tensors, const std::string& dir, const Mapping& mapping,
                        Param& param, int64_t experts) {
  const bool expert_param = param.group == SyncGroup::kExpert;
  const Shape& local = param.value.shape();
  const int64_t first = expert_param ? param.expert_offset : 0;
  const Source* source = nullptr;
  for (const Source& s : mapping.sources) {
    bool all = true;
    for (const std::string& n : source_names(s, experts)) all = all && tensors.contains(n);
    if (all) {
      source = &s;
      break;
    }
  }
  if (!source) {
    for (const std::string& n : source_names(mapping.sources[0], experts)) {
      if (!tensors.contains(n)) {
        return absl::NotFoundError(absl::StrCat(dir, ": the checkpoint has no tensor '", n,
                                                "', which config.json implies (for our '",
                                                param.name, "')"));
      }
    }
  }
  SY_CHECK(source != nullptr) << "no source for " << param.name;
  Tensor host = Tensor::empty(local, DType::kF32);
  const int64_t parts = static_cast<int64_t>(source->parts.size());
  if (source->per_expert) {
    const Shape one = without_first(local);  // one expert's [rows, cols]
    const Shape part_shape = with_first(one, one[0] / parts);
    for (int64_t e = 0; e < local[0]; ++e) {
      Tensor slot = host.rows(e, e + 1).view(one);
      for (int64_t p = 0; p < parts; ++p) {
        SY_ASSIGN_OR_RETURN(Tensor t,
                            tensors.read(expert_name(source->parts[p], first + e), part_shape));
        slot.rows(p * part_shape[0], (p + 1) * part_shape[0]).copy_from(t);
      }
    }
  } else {
    const Shape whole = expert_param ? with_first(local, experts) : local;
    const Shape part_shape = with_first(whole, whole[0] / parts);
    for (int64_t p = 0; p < parts; ++p) {
      SY_ASSIGN_OR_RETURN(Tensor t, tensors.read(source->parts[p], part_shape));
      if (expert_param) {  // a fused [E, ...] tensor: this rank's experts only
        host.copy_from(t.rows(first, first + local[0]));
      } else {
        host.rows(p * part_shape[0], (p + 1) * part_shape[0]).copy_from(t);
      }
    }
  }
  param.value.copy_from(host.to(param.value.device()));
  return absl::OkStatus();
}

// The files beside the weights that a model is used with, copied as they are both ways.
constexpr const char* kCompanionFiles[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
};

absl::Status copy_companions(const fs::path& from, const fs::path& to) {
  for (const char* name : kCompanionFiles) {
    if (!fs::exists(from / name)) continue;
    std::error_code ec;
    fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot copy ", (from / name).string(), " to ",
                                              to.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// A temporary directory beside `final_dir`, renamed to it by commit() and removed otherwise,
// so the output appears whole or not at all.
class StagingDir {
 public:
  static absl::StatusOr<StagingDir> create(const std::string& final_dir) {
    if (fs::exists(final_dir)) {
      return absl::AlreadyExistsError(
          absl::StrCat("--output ", final_dir, " exists; give a new directory"));
    }
    StagingDir s;
    s.final_ = fs::path(final_dir);
    s.tmp_ = fs::path(final_dir + ".tmp." + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(s.tmp_, ec);
    fs::create_directories(s.tmp_, ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("cannot create ", s.tmp_.string(), ": ", ec.message()));
    return s;
  }
  StagingDir() = default;
  StagingDir(StagingDir&& o) noexcept : final_(std::move(o.final_)), tmp_(std::move(o.tmp_)) {
    o.tmp_.clear();
  }
  ~StagingDir() {
    std::error_code ec;
    if (!tmp_.empty()) fs::remove_all(tmp_, ec);
  }
  const fs::path& path() const { return tmp_; }
  absl::Status commit() {
    std::error_code ec;
    fs::rename(tmp_, final_, ec);
    if (ec)
      return absl::InternalError(absl::StrCat("cannot rename ", tmp_.string(), " to ",
                                              final_.string(), ": ", ec.message()));
    tmp_.clear();
    return absl::OkStatus();
  }

 private:
  fs::path final_, tmp_;
};

absl::Status write_text(const fs::path& path, const std::string& text) {
  std::string_view piece = text;
  return write_file_atomically(path.string(), {&piece, 1});
}

absl::StatusOr<switchyard::Experiment> model_experiment(const std::string& dir, HfModel* model) {
  SY_ASSIGN_OR_RETURN(*model, read_hf_model(dir));
  switchyard::Experiment& e = model->experiment;
  // An imported model has trained for no steps; these make the experiment valid as a trained
  // run's is (rl and train --set their own).
  e.mutable_train()->set_steps(1);
  e.mutable_train()->set_micro_batch(1);
  e.set_name(fs::path(dir).filename().empty() ? fs::path(dir).parent_path().filename().string()
                                              : fs::path(dir).filename().string());
  absl::Status valid = validate_experiment(e);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat((fs::path(dir) / "config.json").string(),
                                                   " describes a model switchyard cannot build:\n",
                                                   valid.message()));
  }
  return e;
}

}  // namespace

bool is_hf_checkpoint(const std::string& dir) { return fs::exists(fs::path(dir) / "config.json"); }

absl::StatusOr<switchyard::Experiment> experiment_from_hf(const std::string& dir) {
  HfModel model;
  return model_experiment(dir, &model);
}

absl::Status load_hf_weights(const std::string& dir, ParamStore& store,
                             std::ostream* progress_out) {
  HfModel model;
  SY_ASSIGN_OR_RETURN(switchyard::Experiment e, model_experiment(dir, &model));
  const ModelSpec spec = model_spec_from_config(e);
  SY_ASSIGN_OR_RETURN(HfTensors tensors, HfTensors::open(dir));
  const std::map<std::string, Mapping> mappings = mappings_for(spec, *model.arch);
  // Every tensor of the checkpoint must have a place: an unclaimed one means config.json and
  // the weights disagree (or an architecture variant we would silently mis-read).
  std::set<std::string> claimed;
  for (const auto& [ours, m] : mappings)
    for (const Source& s : m.sources)
      for (const std::string& n : source_names(s, spec.moe.num_experts)) claimed.insert(n);
  for (const std::string& n : ignored_tensors(spec)) claimed.insert(n);
  for (const std::string& n : tensors.names()) {
    if (!claimed.count(n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensors.file(n).path(), ": tensor '", n, "' has no place in a ", model.arch->name,
          " with this config.json (extra tensor, or a variant switchyard does not convert)"));
    }
  }
  std::optional<Progress> progress;
  int64_t total = 0, done = 0;
  for (const Param* p : store.params()) total += static_cast<int64_t>(p->value.nbytes());
  if (progress_out)
    progress.emplace(*progress_out, absl::StrCat("read ", dir), total, "bytes",
                     is_terminal(*progress_out));
  for (Param* p : store.params()) {
    auto it = mappings.find(p->name);
    if (it == mappings.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", p->name, "' of the configured model has no counterpart in ", dir, " (",
          model.arch->name, "); a model loaded from it has no MTP modules or value head"));
    }
    SY_RETURN_IF_ERROR(fill_param(tensors, dir, it->second, *p, spec.moe.num_experts));
    done += static_cast<int64_t>(p->value.nbytes());
    if (progress) progress->update(done);
  }
  if (progress) progress->finish(done);
  store.values_changed();
  return absl::OkStatus();
}

absl::Status import_hf_checkpoint(const std::string& hf_dir, const std::string& run_dir,
                                  std::ostream& log) {
  HfModel model;
  SY_ASSIGN_OR_RETURN(switchyard::Experiment e, model_experiment(hf_dir, &model));
  e.set_run_dir(run_dir);
  const ModelSpec spec = model_spec_from_config(e);
  ParamStore store;
  Transformer transformer(spec, store);
  SY_RETURN_IF_ERROR(load_hf_weights(hf_dir, store, &log));
  SY_ASSIGN_OR_RETURN(StagingDir staging, StagingDir::create(run_dir));
  SY_RETURN_IF_ERROR(write_text(staging.path() / "config.textproto", resolved_experiment_text(e)));
  SY_RETURN_IF_ERROR(save_weights_checkpoint(staging.path().string(), store, &log));
  SY_ASSIGN_OR_RETURN(std::string config_json,
                      read_file((fs::path(hf_dir) / "config.json").string()));
  SY_RETURN_IF_ERROR(write_text(staging.path() / "hf_config.json", config_json));
  SY_RETURN_IF_ERROR(copy_companions(hf_dir, staging.path()));
  SY_RETURN_IF_ERROR(staging.commit());
  int64_t params = 0;
  for (const Param* p : store.params()) params += p->value.numel();
  log << "imported " << model.arch->name << " (" << spec.n_layers << " layers, d_model "
      << spec.d_model << ", "
      << (spec.has_moe() ? absl::StrCat(spec.moe.num_experts, " experts top-", spec.moe.top_k)
                         : std::string("dense"))
      << ", " << absl::StrFormat("%.2fM", params / 1e6) << " parameters, "
      << (model.dtype.empty() ? std::string("dtype unstated") : model.dtype) << ") from " << hf_dir
      << " into " << run_dir << "\n";
  return absl::OkStatus();
}

namespace {

// The architecture that computes what this model computes, or the field that rules them out.
absl::StatusOr<const Architecture*> export_architecture(const switchyard::Experiment& e) {
  const auto& m = e.model();
  const auto& moe = e.moe();
  const ModelSpec spec = model_spec_from_config(e);
  if (!spec.has_moe())
    return find_architecture(m.qk_norm() ? "Qwen3ForCausalLM" : "LlamaForCausalLM");
  auto refuse = [](const std::string& field, const std::string& value, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, ": ", why,
                                                   ", so no Hugging Face architecture we write "
                                                   "computes this model"));
  };
  if (moe.score_function() != switchyard::MoeConfig::SCORE_SOFTMAX)
    return refuse("moe.score_function", "SCORE_SIGMOID", "Mixtral and Qwen3-MoE route by softmax");
  if (moe.n_groups() != 1)
    return refuse("moe.n_groups", absl::StrCat(moe.n_groups()),
                  "they have no group-limited routing");
  if (moe.route_scale() != 1.0)
    return refuse("moe.route_scale", absl::StrCat(moe.route_scale()),
                  "they do not scale routing weights");
  if (moe.num_shared_experts() != 0)
    return refuse("moe.num_shared_experts", absl::StrCat(moe.num_shared_experts()),
                  "they have no shared experts");
  if (moe.bias_update_rate() != 0)
    return refuse("moe.bias_update_rate", absl::StrCat(moe.bias_update_rate()),
                  "they have no routing bias");
  if (m.qk_norm()) return find_architecture("Qwen3MoeForCausalLM");
  if (!moe.normalize_topk())
    return refuse("moe.normalize_topk", "false",
                  "Mixtral always renormalises (and Qwen3-MoE needs model.qk_norm)");
  if (m.first_k_dense() != 0)
    return refuse("model.first_k_dense", absl::StrCat(m.first_k_dense()),
                  "Mixtral has no dense layers (and Qwen3-MoE needs model.qk_norm)");
  return find_architecture("MixtralForCausalLM");
}

const char* torch_dtype_name(DType d) { return d == DType::kBF16 ? "bfloat16" : "float32"; }

Json hf_config_json(const switchyard::Experiment& e, const Architecture& a, DType dtype,
                    Json base) {
  const auto& m = e.model();
  const auto& moe = e.moe();
  const ModelSpec spec = model_spec_from_config(e);
  // A config.json kept from the import keeps its other fields (token ids, ...), unless it was
  // of another architecture.
  const Json* was = base.is_object() ? base.find("architectures") : nullptr;
  if (!was || to_json(*was) != to_json(Json(Json::Array{Json(a.name)}))) base = Json::Object{};
  for (const char* stale : {"rope_scaling", "rope_parameters", "quantization_config"}) {
    auto& obj = base.as_object();
    obj.erase(
        std::remove_if(obj.begin(), obj.end(), [&](const auto& kv) { return kv.first == stale; }),
        obj.end());
  }
  base.set("architectures", Json::Array{Json(a.name)});
  base.set("model_type", a.model_type);
  base.set("vocab_size", m.vocab_size());
  base.set("hidden_size", m.d_model());
  base.set("num_hidden_layers", m.n_layers());
  base.set("num_attention_heads", m.n_heads());
  base.set("num_key_value_heads", m.n_kv_heads());
  base.set("head_dim", spec.head_dim());
  base.set("hidden_act", "silu");
  base.set("max_position_embeddings", m.seq_len());
  base.set("rms_norm_eps", m.norm_eps());
  base.set("rope_theta", m.rope_theta());
  Json rope = Json::Object{};
  rope.set("rope_type", "default");
  rope.set("rope_theta", m.rope_theta());
  base.set("rope_parameters", std::move(rope));
  base.set("tie_word_embeddings", m.tie_embeddings());
  base.set("attention_bias", false);
  base.set("torch_dtype", torch_dtype_name(dtype));
  base.set("dtype", torch_dtype_name(dtype));
  const bool mixtral = std::string_view(a.model_type) == "mixtral";
  if (mixtral) {
    base.set("sliding_window", nullptr);
  } else if (std::string_view(a.model_type).starts_with("qwen3")) {
    base.set("use_sliding_window", false);
    base.set("sliding_window", nullptr);
  } else {
    base.set("mlp_bias", false);
  }
  if (!a.moe) {
    base.set("intermediate_size", m.dense_ffn_hidden());
    return base;
  }
  base.set("num_experts_per_tok", moe.top_k());
  base.set("router_aux_loss_coef", moe.aux_loss_coef());
  if (mixtral) {
    base.set("intermediate_size", moe.expert_hidden());
    base.set("num_local_experts", moe.num_experts());
    return base;
  }
  // Without dense layers intermediate_size is read by nothing: a kept value stays.
  if (m.first_k_dense() > 0 || !base.find("intermediate_size")) {
    base.set("intermediate_size",
             m.first_k_dense() > 0 ? m.dense_ffn_hidden() : moe.expert_hidden());
  }
  base.set("moe_intermediate_size", moe.expert_hidden());
  base.set("num_experts", moe.num_experts());
  base.set("norm_topk_prob", moe.normalize_topk());
  base.set("decoder_sparse_step", 1);
  Json::Array dense;
  for (int l = 0; l < m.first_k_dense(); ++l) dense.emplace_back(l);
  base.set("mlp_only_layers", std::move(dense));
  return base;
}

absl::StatusOr<int64_t> parse_size(const std::string& text) {
  static const std::pair<const char*, int64_t> kUnits[] = {
      {"GB", 1'000'000'000}, {"MB", 1'000'000}, {"KB", 1'000}, {"B", 1}};
  for (const auto& [unit, scale] : kUnits) {
    if (!text.ends_with(unit)) continue;
    double v;
    // "infGB", "nanMB" and "1e30GB" parse as doubles; none is a size an int64 can hold.
    if (absl::SimpleAtod(text.substr(0, text.size() - std::string_view(unit).size()), &v) &&
        v * scale >= 1 && v * scale < 9.0e18)
      return static_cast<int64_t>(v * scale);
    break;
  }
  int64_t v;
  if (absl::SimpleAtoi(text, &v) && v > 0) return v;
  return absl::InvalidArgumentError(
      absl::StrCat("--max_shard_size ", text, ": give a size such as 5GB, 500MB or 200KB"));
}

}  // namespace

absl::Status export_hf_checkpoint(const std::string& run_dir, const std::string& out_dir,
                                  const HfExportOptions& options, std::ostream& log) {
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF32) {
    return absl::InvalidArgumentError("--dtype: export writes bf16 or f32");
  }
  const std::string saved = (fs::path(run_dir) / "config.textproto").string();
  if (!fs::exists(saved)) {
    return absl::NotFoundError(absl::StrCat("--input ", run_dir,
                                            ": neither config.json (a Hugging "
                                            "Face checkpoint) nor config.textproto (a run) there"));
  }
  SY_ASSIGN_OR_RETURN(switchyard::Experiment e, load_experiment(saved, {}));
  SY_ASSIGN_OR_RETURN(const Architecture* arch, export_architecture(e));
  const ModelSpec spec = model_spec_from_config(e);
  ParamStore store;
  Transformer transformer(spec, store);
  SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(run_dir));
  SY_RETURN_IF_ERROR(load_checkpoint(dir, store, nullptr, {.expert_parallel = 1}, &log).status());

  // Our parameters through the table's first (Hub) layout, in the store's order.
  const std::map<std::string, Mapping> mappings = mappings_for(spec, *arch);
  std::vector<std::pair<std::string, Tensor>> tensors;
  int dropped = 0;
  for (const Param* p : store.params()) {
    auto it = mappings.find(p->name);
    if (it == mappings.end()) {
      SY_CHECK(p->name.starts_with("mtp.")) << "no conversion row for " << p->name;
      ++dropped;
      continue;
    }
    const Source& s = it->second.sources[0];
    const int64_t parts = static_cast<int64_t>(s.parts.size());
    auto emit = [&](const std::string& name, const Tensor& whole, int64_t part) {
      const int64_t rows = whole.dim(0) / parts;
      tensors.emplace_back(name,
                           whole.rows(part * rows, (part + 1) * rows).clone().to(options.dtype));
    };
    if (s.per_expert) {
      const Shape one = without_first(p->value.shape());
      for (int64_t e = 0; e < p->value.dim(0); ++e) {
        const Tensor slot = p->value.rows(e, e + 1).view(one);
        for (int64_t k = 0; k < parts; ++k) emit(expert_name(s.parts[k], e), slot, k);
      }
    } else {
      for (int64_t k = 0; k < parts; ++k) emit(s.parts[k], p->value, k);
    }
  }

  // Shards of at most max_shard_bytes (a larger tensor gets one of its own), named as
  // save_pretrained names them; one file and no index when everything fits.
  std::vector<std::vector<size_t>> shards;
  int64_t filled = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t bytes = tensors[i].second.nbytes();
    if (shards.empty() || (filled > 0 && filled + bytes > options.max_shard_bytes)) {
      shards.emplace_back();
      filled = 0;
    }
    shards.back().push_back(i);
    filled += bytes;
    total += bytes;
  }
  SY_ASSIGN_OR_RETURN(StagingDir staging, StagingDir::create(out_dir));
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  Json weight_map = Json::Object{};
  Progress progress(log, absl::StrCat("write ", out_dir), total, "bytes", is_terminal(log));
  int64_t written = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = shards.size() == 1 ? std::string("model.safetensors")
                                                : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                                                  k + 1, shards.size());
    std::vector<std::pair<std::string, Tensor>> part;
    for (size_t i : shards[k]) {
      part.push_back(tensors[i]);
      weight_map.set(tensors[i].first, file);
    }
    SY_RETURN_IF_ERROR(save_safetensors((staging.path() / file).string(), part, meta));
    for (size_t i : shards[k]) written += tensors[i].second.nbytes();
    progress.update(written);
  }
  progress.finish(written);
  if (shards.size() > 1) {
    Json index = Json::Object{};
    Json metadata = Json::Object{};
    metadata.set("total_size", total);
    index.set("metadata", std::move(metadata));
    index.set("weight_map", std::move(weight_map));
    SY_RETURN_IF_ERROR(
        write_text(staging.path() / "model.safetensors.index.json", to_json(index) + "\n"));
  }
  Json base;
  const fs::path kept = fs::path(run_dir) / "hf_config.json";
  if (fs::exists(kept)) {
    SY_ASSIGN_OR_RETURN(base, read_json(kept.string()));
  }
  SY_RETURN_IF_ERROR(
      write_text(staging.path() / "config.json",
                 to_json(hf_config_json(e, *arch, options.dtype, std::move(base))) + "\n"));
  SY_RETURN_IF_ERROR(copy_companions(run_dir, staging.path()));
  SY_RETURN_IF_ERROR(staging.commit());
  if (dropped > 0) {
    log << "left out the " << spec.mtp_modules << " MTP module(s) (" << dropped
        << " tensors): " << arch->name << " has none\n";
  }
  log << "exported " << dir << " as " << arch->name << " (" << tensors.size() << " tensors, "
      << torch_dtype_name(options.dtype) << ", " << shards.size() << " file(s)) to " << out_dir
      << "\n";
  return absl::OkStatus();
}

absl::Status run_convert_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags(
      "switchyard convert", "--input DIR --output DIR [--dtype bf16|f32] [--max_shard_size SIZE]",
      "Converts between Hugging Face checkpoints and switchyard runs; the input decides\n"
      "the direction. A Hugging Face directory (config.json + safetensors: Llama,\n"
      "Qwen3, Mixtral, Qwen3-MoE) becomes a run directory that generate, score and\n"
      "rl.init_checkpoint take like a trained run (tokenizer files copied along; it holds\n"
      "no optimizer state, so train --resume cannot continue it). A run directory\n"
      "(config.textproto) has its latest checkpoint written as a directory that\n"
      "transformers' from_pretrained loads. The output must not exist yet.");
  std::string input, output, dtype = "bf16", shard = "5GB";
  flags.add_string("input", "DIR", &input, "a Hugging Face checkpoint or a run directory");
  flags.add_string("output", "DIR", &output, "where to write (a new directory)");
  flags.add_string("dtype", "bf16|f32", &dtype, "export: dtype of the written tensors");
  flags.add_string("max_shard_size", "SIZE", &shard, "export: largest safetensors file, e.g. 5GB");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("input"));
  SY_RETURN_IF_ERROR(flags.require("output"));
  if (!fs::is_directory(input))
    return absl::NotFoundError(absl::StrCat("--input ", input, ": no such directory"));
  if (is_hf_checkpoint(input)) return import_hf_checkpoint(input, output, out);
  HfExportOptions options;
  if (dtype == "bf16" || dtype == "bfloat16") {
    options.dtype = DType::kBF16;
  } else if (dtype == "f32" || dtype == "float32") {
    options.dtype = DType::kF32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--dtype ", dtype, ": give bf16 or f32"));
  }
  SY_ASSIGN_OR_RETURN(options.max_shard_bytes, parse_size(shard));
  return export_hf_checkpoint(input, output, options, out);
}

}  // namespace sy
