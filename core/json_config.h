// A small schema-checked JSON configuration: keys are dotted paths ("train.seq_len") with a type,
// a default, a documentation line and optional range checks. Values come, in order, from the
// defaults, a JSON file (nested objects) and `--set key=value` overrides; every mistake a user can
// make (malformed JSON, unknown key, wrong type, out-of-range value) raises one ringattn::Error
// that names where the value came from. The resolved config (every key, defaults filled) dumps as
// JSON, which is what the trainer prints at start and saves into checkpoints.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ringattn {

enum class ConfigType { Int, Float, Bool, String, Enum, IntList, StringList };

struct ConfigKey {
  std::string name;  // dotted path, e.g. "train.seq_len"
  ConfigType type = ConfigType::Int;
  nlohmann::json default_value;
  std::string doc;
  std::vector<std::string> choices;  // Enum only
  // Range of an Int or Float (of each element of an IntList); both ends optional.
  std::optional<double> min, max;
  bool min_exclusive = false, max_exclusive = false;

  // Fluent range setters: add_int("train.steps", 100, "...").at_least(1).
  ConfigKey& at_least(double v);
  ConfigKey& above(double v);
  ConfigKey& at_most(double v);
  ConfigKey& below(double v);

  // "integer", "number", "boolean", "string", "one of a, b", "list of integers", ...
  std::string type_text() const;
  // "value >= 1", "0 <= value < 1"; empty when there is no range.
  std::string range_text() const;
};

class ConfigSchema {
 public:
  // Each returns the new key so a range can be chained; the reference stays valid (deque).
  ConfigKey& add_int(std::string name, int64_t def, std::string doc);
  ConfigKey& add_float(std::string name, double def, std::string doc);
  ConfigKey& add_bool(std::string name, bool def, std::string doc);
  ConfigKey& add_string(std::string name, std::string def, std::string doc);
  ConfigKey& add_enum(std::string name, std::string def, std::vector<std::string> choices,
                      std::string doc);
  ConfigKey& add_int_list(std::string name, std::vector<int64_t> def, std::string doc);
  ConfigKey& add_string_list(std::string name, std::vector<std::string> def, std::string doc);

  const std::deque<ConfigKey>& keys() const { return keys_; }  // in declaration order
  std::optional<size_t> index_of(std::string_view name) const;
  // True when `name` is a section: a strict prefix ("train") of some key's path.
  bool is_section(std::string_view name) const;
  // The valid key closest to a mistyped one (edit distance, also matching the last component in
  // another section), or "" when none is close enough to be a plausible typo.
  std::string nearest(std::string_view name) const;
  // The documentation table (key | type | default | meaning) that docs/config.md embeds.
  std::string markdown() const;

 private:
  ConfigKey& add(ConfigKey key);
  std::deque<ConfigKey> keys_;
  std::map<std::string, size_t, std::less<>> index_;
};

// The config key a flattened JSON pointer names: "/train/seq_len" -> "train.seq_len".
std::string config_key_of_pointer(const std::string& pointer);

class JsonConfig {
 public:
  // Starts from the schema's defaults (each checked against its own type and range).
  explicit JsonConfig(ConfigSchema schema);

  // Reads a JSON object of nested sections; only the keys it names change.
  void load_file(const std::string& path);
  // The same from text; `source` (a file name) is what error messages name.
  void load_text(std::string_view text, const std::string& source);
  // One `--set key=value` override; the value is parsed by the key's type: integers, numbers,
  // true/false, strings as written, lists as JSON ("[1024,2048]") or comma-separated.
  void set(std::string_view assignment);
  // Sets one key from a JSON value after the same checks; `source` is named in errors.
  void set_value(std::string_view key, const nlohmann::json& value, const std::string& source);

  // Typed access; asking for an undeclared key or with the wrong type is a programming error.
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;  // String and Enum keys
  std::vector<int64_t> get_int_list(std::string_view key) const;
  std::vector<std::string> get_string_list(std::string_view key) const;
  const nlohmann::json& value(std::string_view key) const;
  // Where the current value came from: "default", a file path or "--set".
  const std::string& origin(std::string_view key) const;

  // Every key as nested objects in schema order, defaults filled.
  nlohmann::ordered_json to_json() const;
  std::string dump(int indent = 2) const { return to_json().dump(indent); }
  const ConfigSchema& schema() const { return schema_; }

 private:
  size_t require(std::string_view key, ConfigType a, ConfigType b) const;
  void load_object(const nlohmann::json& object, const std::string& prefix,
                   const std::string& source, std::set<std::string>& seen);

  ConfigSchema schema_;
  std::vector<nlohmann::json> values_;  // parallel to schema_.keys()
  std::vector<std::string> origins_;
};

// Edit distance (insertions, deletions, substitutions), used for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace ringattn
