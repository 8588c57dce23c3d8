#pragma once
// Loading, validating and printing the experiment config (configs/switchyard.proto).
//
// A run's config comes from one text-format file plus any number of `--set` fragments,
// applied in order. Every error a user can cause (bad file, bad syntax, bad value) comes back
// as an absl::Status whose message names where it happened and what to do about it, in one
// style:
//
//   <where>: <what is wrong>[; <hint>]                     (parse errors: protobuf's words,
//     <the offending line>                                  then the line and a caret)
//     <caret under the column>
//   <where>: <field path>: <what is wrong>; <what to do>   (validation: one line per problem)
//
// <where> is `file:line:col` (1-based), `--set #N 'fragment':line:col` for an override, or is
// left out when the offending value is a default that no source set.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "configs/switchyard.pb.h"
#include "google/protobuf/text_format.h"

namespace sy {

// Where each field of a loaded experiment was set: one entry per source (the file, then each
// --set fragment), each with what that source alone set and where in its text.
class ConfigSources {
 public:
  ConfigSources();
  ~ConfigSources();
  ConfigSources(ConfigSources&&) noexcept;
  ConfigSources& operator=(ConfigSources&&) noexcept;

  // `label` names the source in messages ("configs/x.textproto", "--set #2 '...'").
  // `info` is the parser's location tree for `parsed` (not null).
  void add(std::string label, switchyard::Experiment parsed,
           std::unique_ptr<google::protobuf::TextFormat::ParseInfoTree> info);

  // "label:line:col" of the last source that set the field at `field_path` (dot-separated
  // field names from Experiment, e.g. "model.d_model"); empty when no source set it.
  std::string where(absl::string_view field_path) const;
  // Index (in order of add()) of the last source that set the field; -1 when none did.
  int last_setter(absl::string_view field_path) const;

 private:
  struct Source;
  // (index, "label:line:col") of the last source that set the field.
  std::optional<std::pair<int, std::string>> locate(absl::string_view field_path) const;
  std::vector<Source> sources_;
};

// Collects broken rules of a config as `<where>: <field>: <what is wrong>; <what to do>`, one
// line each; `where` comes from the sources (the file or --set fragment that set the field).
// Layers above trainer/ add their own rules through ConfigRules::extra.
class ConfigProblems {
 public:
  ConfigProblems(const switchyard::Experiment& experiment, const ConfigSources& sources)
      : experiment_(experiment), sources_(sources) {}

  // A rule over several fields (`fields`, the main one first) names the one set by the latest
  // source: that is the edit that broke the rule (e.g. an --set of model.n_heads against the
  // file's d_model), so that is where to point. `wrong` mentions the fields by full path so it
  // reads right whichever is named.
  void add(std::initializer_list<absl::string_view> fields, absl::string_view wrong,
           absl::string_view fix);
  void add(absl::string_view field, absl::string_view wrong, absl::string_view fix) {
    add({field}, wrong, fix);
  }

  // Integer sizes that must be positive (or at least zero).
  void positive(absl::string_view field, int64_t value);
  void non_negative(absl::string_view field, int64_t value);
  // The upper end of an integer's range (configs/switchyard.proto states each); `why` says
  // what the bound protects for this field. Call after the lower-bound rule, whose message it
  // does not repeat.
  void at_most(absl::string_view field, int64_t value, int64_t max, absl::string_view why);
  // Text format accepts "nan" and "inf": NaN fails every range, and infinity is refused apart
  // (no knob means anything at infinity).
  void positive_real(absl::string_view field, double value);
  void non_negative_real(absl::string_view field, double value, absl::string_view zero_means);
  void finite(absl::string_view field, double value);
  // value in [0, 1): Adam's betas.
  void unit_interval_open(absl::string_view field, double value);

  absl::Status status() const;

 private:
  const switchyard::Experiment& experiment_;
  const ConfigSources& sources_;
  std::vector<std::string> lines_;
};

// "model.d_model", "N" -> "model { d_model: N }": the text a user writes to set the field.
std::string config_setting(absl::string_view field_path, absl::string_view value);

// What a config is for, beyond the rules every experiment obeys. A training run needs the
// model and the training sizes; a fine-tuning config (rl/rl_config.h) takes its model from a
// checkpoint, so it may leave out the model and train.steps and train.micro_batch, and adds
// the rules of its own message.
struct ConfigRules {
  bool model_from_checkpoint = false;
  std::function<void(const switchyard::Experiment&, ConfigProblems&)> extra;
};

// Reads `config_path`, merges the `overrides` (text-format fragments, e.g.
// "optimizer { lr: 1e-3 }") over it in order, and validates the result. A field set by a later
// source replaces the earlier value; a repeated field is replaced as a whole, not appended to;
// a message field is merged field by field. A singular field given twice within one source is
// an error. A missing, unreadable or empty (only whitespace and comments) file is an error.
absl::StatusOr<switchyard::Experiment> load_experiment(const std::string& config_path,
                                                       const std::vector<std::string>& overrides,
                                                       const ConfigRules& rules = {});

// load_experiment without the validation: what the sources say, merged (parse errors still
// come back). For deciding which rules a config is for (`switchyard config`).
absl::StatusOr<switchyard::Experiment> parse_experiment(const std::string& config_path,
                                                        const std::vector<std::string>& overrides);

// Checks the cross-field rules (positive sizes, head and expert divisibility, routing groups,
// optimizer ranges, ...) and `rules.extra`. Reports every broken rule, one per line; `sources`
// (from the loader) lets each message point to where the offending value was set.
absl::Status validate_experiment(const switchyard::Experiment& experiment,
                                 const ConfigSources& sources = ConfigSources(),
                                 const ConfigRules& rules = {});

// Text format of the fields that are set (what a user wrote), parseable by load_experiment.
std::string experiment_to_text(const switchyard::Experiment& experiment);

// A copy in which every singular field, at every depth, is explicitly set, to its [default]
// when it was not set. Printing this is how the resolved config shows defaults: the stock
// TextFormat::Printer has no print-defaults option, so the defaults are made explicit instead.
switchyard::Experiment with_defaults_set(const switchyard::Experiment& experiment);

// Text format of the fully resolved config: experiment_to_text(with_defaults_set(experiment)).
// This is what `switchyard config` prints and what a run writes to its run directory, so a
// later change of a default never changes what an old run meant.
std::string resolved_experiment_text(const switchyard::Experiment& experiment);

}  // namespace sy
