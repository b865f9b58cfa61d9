#include "core/json_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ringattn {

namespace {

using nlohmann::json;

// What a config file may be: far beyond any real one (a few KB, three levels deep).
constexpr size_t kMaxConfigBytes = size_t(16) << 20;
constexpr int kMaxConfigDepth = 32;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view leaf_of(std::string_view name) {
  const auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

std::string_view section_of(std::string_view name) {
  const auto dot = name.rfind('.');
  return dot == std::string_view::npos ? std::string_view{} : name.substr(0, dot);
}

// The offset of the first byte that is not part of a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points past U+10FFFF included), or npos. JSON text is UTF-8, and
// nlohmann's serializer throws on anything else when the config is written out (config.json in
// the run directory, checkpoints), so a --set value must be checked when it comes in.
size_t invalid_utf8_at(std::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = byte(i);
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
    if (c < 0x80) {
      ++i;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    for (size_t k = 1; k <= n; ++k) {
      const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
      if (i + k >= s.size() || byte(i + k) < lo_k || byte(i + k) > hi_k) return i;
    }
    i += n + 1;
  }
  return std::string_view::npos;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// A value as the user wrote it, short enough for one line, with its JSON kind so that "2048"
// (a string) is told apart from 2048.
std::string found_text(const json& v) {
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return fmt::format("{} ({})", text, v.type_name());
}

std::string number_text(double v) {
  // Integers print without a fraction so ranges of integer keys read naturally.
  if (std::abs(v) < 1e15 && v == std::floor(v)) return fmt::format("{}", int64_t(v));
  return fmt::format("{}", v);
}

[[noreturn]] void wrong_type(const ConfigKey& key, const std::string& source,
                             const std::string& found) {
  RA_FAIL("{} in {} must be {}, found {}", key.name, source, key.type_text(), found);
}

// Range check of one number; `label` is the key, or "key[i]" for a list element.
void check_range(const ConfigKey& key, const std::string& label, double v,
                 const std::string& source) {
  const bool low = key.min && (key.min_exclusive ? v <= *key.min : v < *key.min);
  const bool high = key.max && (key.max_exclusive ? v >= *key.max : v > *key.max);
  RA_CHECK(!low && !high, "{} = {} in {} is out of range: expected {}", label, number_text(v),
           source, key.range_text());
}

// An integer that fits int64, or a wrong-type / out-of-range error. JSON keeps non-negative
// integers unsigned and too-large ones as floats, so both are handled here.
int64_t checked_int(const ConfigKey& key, const std::string& label, const json& v,
                    const std::string& source) {
  if (!v.is_number_integer()) {
    RA_FAIL("{} in {} must be {}, found {}", label, source,
            key.type == ConfigType::IntList ? "an integer" : key.type_text(), found_text(v));
  }
  if (v.is_number_unsigned()) {
    RA_CHECK(v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()),
             "{} = {} in {} is out of range: it does not fit in a 64-bit integer", label, v.dump(),
             source);
  }
  const int64_t i = v.get<int64_t>();
  check_range(key, label, double(i), source);
  return i;
}

// The value `v` checked against `key` and normalized (integers as int64, numbers as double).
json checked_value(const ConfigKey& key, const json& v, const std::string& source) {
  switch (key.type) {
    case ConfigType::Int:
      return checked_int(key, key.name, v, source);
    case ConfigType::Float: {
      if (!v.is_number()) wrong_type(key, source, found_text(v));
      const double d = v.get<double>();
      check_range(key, key.name, d, source);
      return d;
    }
    case ConfigType::Bool:
      if (!v.is_boolean()) wrong_type(key, source, found_text(v));
      return v;
    case ConfigType::String:
      if (!v.is_string()) wrong_type(key, source, found_text(v));
      return v;
    case ConfigType::Enum: {
      if (!v.is_string()) wrong_type(key, source, found_text(v));
      const std::string s = v.get<std::string>();
      if (std::find(key.choices.begin(), key.choices.end(), s) != key.choices.end()) return v;
      std::string hint;
      size_t best = 3;  // suggest a choice only when it is within two edits
      for (const std::string& c : key.choices) {
        const size_t d = edit_distance(lower(s), lower(c));
        if (d < best) best = d, hint = fmt::format("; did you mean '{}'?", c);
      }
      RA_FAIL("{} in {} must be {}, found {}{}", key.name, source, key.type_text(), v.dump(), hint);
    }
    case ConfigType::IntList: {
      if (!v.is_array()) wrong_type(key, source, found_text(v));
      json out = json::array();
      for (size_t i = 0; i < v.size(); ++i)
        out.push_back(checked_int(key, fmt::format("{}[{}]", key.name, i), v[i], source));
      return out;
    }
    case ConfigType::StringList: {
      if (!v.is_array()) wrong_type(key, source, found_text(v));
      for (size_t i = 0; i < v.size(); ++i)
        RA_CHECK(v[i].is_string(), "{}[{}] in {} must be a string, found {}", key.name, i, source,
                 found_text(v[i]));
      return v;
    }
  }
  RA_FAIL("internal: unhandled config type for {}", key.name);
}

[[noreturn]] void unknown_key(const ConfigSchema& schema, std::string_view name,
                              const std::string& source) {
  const std::string near = schema.nearest(name);
  if (!near.empty()) RA_FAIL("unknown key '{}' in {}; did you mean '{}'?", name, source, near);
  RA_FAIL("unknown key '{}' in {} (docs/config.md lists every key)", name, source);
}

[[noreturn]] void section_not_object(const ConfigSchema& schema, std::string_view name,
                                     const std::string& source) {
  std::string example;
  for (const ConfigKey& k : schema.keys())
    if (k.name.size() > name.size() && k.name.compare(0, name.size(), name) == 0 &&
        k.name[name.size()] == '.') {
      example = k.name;
      break;
    }
  RA_FAIL("'{}' in {} is a section, not a value: give an object of its keys (such as '{}')", name,
          source, example);
}

// nlohmann reports the byte offset of the offending character; editors want line and column.
std::pair<size_t, size_t> line_column(std::string_view text, size_t byte) {
  const size_t pos = std::min(byte == 0 ? 0 : byte - 1, text.size());
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < pos; ++i)
    if (text[i] == '\n') ++line, line_start = i + 1;
  return {line, pos - line_start + 1};
}

// "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..." -> the part
// after the position, which says what was wrong.
std::string parse_error_reason(const std::string& what) {
  const auto at = what.find("parse error");
  const auto colon = what.find(": ", at == std::string::npos ? 0 : at);
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

// A --set value as text -> JSON of the key's type; mistakes name the text as typed.
json parse_set_value(const ConfigKey& key, const std::string& text) {
  const std::string source = "--set";
  const std::string found = fmt::format("'{}'", text);
  switch (key.type) {
    case ConfigType::Int: {
      int64_t v = 0;
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec == std::errc::result_out_of_range)
        RA_FAIL("{} = {} in --set is out of range: it does not fit in a 64-bit integer", key.name,
                text);
      if (ec != std::errc() || end != text.data() + text.size() || text.empty())
        wrong_type(key, source, found);
      return v;
    }
    case ConfigType::Float: {
      char* end = nullptr;
      const double v = text.empty() ? 0.0 : std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v))
        wrong_type(key, source, found);
      return v;
    }
    case ConfigType::Bool:
      if (text == "true") return true;
      if (text == "false") return false;
      wrong_type(key, source, found);
    case ConfigType::String:
    case ConfigType::Enum:
      return text;  // as written: no quotes needed on the command line
    case ConfigType::IntList:
    case ConfigType::StringList: {
      if (!text.empty() && text.front() == '[') {
        try {
          return json::parse(text);
        } catch (const json::exception&) {  // syntax, or a number beyond a double (3e2048)
          wrong_type(key, source, found);
        }
      }
      // Comma-separated, which needs no quoting in a shell: 1024,2048 or a.txt,b.txt.
      json out = json::array();
      if (trim(text).empty()) return out;
      std::stringstream in(text);
      for (std::string item; std::getline(in, item, ',');) {
        item = trim(item);
        if (key.type == ConfigType::StringList) {
          out.push_back(item);
          continue;
        }
        int64_t v = 0;
        const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
        if (ec != std::errc() || end != item.data() + item.size() || item.empty())
          wrong_type(key, source, found);
        out.push_back(v);
      }
      return out;
    }
  }
  RA_FAIL("internal: unhandled config type for {}", key.name);
}

}  // namespace

// ---- ConfigKey --------------------------------------------------------------------------------

ConfigKey& ConfigKey::at_least(double v) {
  min = v, min_exclusive = false;
  return *this;
}
ConfigKey& ConfigKey::above(double v) {
  min = v, min_exclusive = true;
  return *this;
}
ConfigKey& ConfigKey::at_most(double v) {
  max = v, max_exclusive = false;
  return *this;
}
ConfigKey& ConfigKey::below(double v) {
  max = v, max_exclusive = true;
  return *this;
}

std::string ConfigKey::type_text() const {
  switch (type) {
    case ConfigType::Int:
      return "an integer";
    case ConfigType::Float:
      return "a number";
    case ConfigType::Bool:
      return "true or false";
    case ConfigType::String:
      return "a string";
    case ConfigType::Enum:
      return fmt::format("one of {}", fmt::join(choices, ", "));
    case ConfigType::IntList:
      return "a list of integers";
    case ConfigType::StringList:
      return "a list of strings";
  }
  return "?";
}

std::string ConfigKey::range_text() const {
  const std::string lo =
      min ? fmt::format("{} {} ", number_text(*min), min_exclusive ? "<" : "<=") : "";
  const std::string hi =
      max ? fmt::format(" {} {}", max_exclusive ? "<" : "<=", number_text(*max)) : "";
  if (min && !max) return fmt::format("value {} {}", min_exclusive ? ">" : ">=", number_text(*min));
  if (!min && !max) return "";
  return lo + "value" + hi;
}

// ---- ConfigSchema -----------------------------------------------------------------------------

namespace {
ConfigKey make_key(std::string name, ConfigType type, json def, std::string doc) {
  ConfigKey key;
  key.name = std::move(name);
  key.type = type;
  key.default_value = std::move(def);
  key.doc = std::move(doc);
  return key;
}
}  // namespace

ConfigKey& ConfigSchema::add(ConfigKey key) {
  RA_CHECK(!key.name.empty() && !index_.count(key.name), "internal: config key '{}' declared twice",
           key.name);
  // A path is either a value or a section, never both, so a file's objects map to keys uniquely.
  RA_CHECK(!is_section(key.name), "internal: config key '{}' is also a section", key.name);
  for (std::string_view s = section_of(key.name); !s.empty(); s = section_of(s))
    RA_CHECK(!index_.count(s), "internal: config key '{}' is inside value key '{}'", key.name, s);
  index_.emplace(key.name, keys_.size());
  keys_.push_back(std::move(key));
  return keys_.back();
}

ConfigKey& ConfigSchema::add_int(std::string name, int64_t def, std::string doc) {
  return add(make_key(std::move(name), ConfigType::Int, def, std::move(doc)));
}
ConfigKey& ConfigSchema::add_float(std::string name, double def, std::string doc) {
  return add(make_key(std::move(name), ConfigType::Float, def, std::move(doc)));
}
ConfigKey& ConfigSchema::add_bool(std::string name, bool def, std::string doc) {
  return add(make_key(std::move(name), ConfigType::Bool, def, std::move(doc)));
}
ConfigKey& ConfigSchema::add_string(std::string name, std::string def, std::string doc) {
  return add(make_key(std::move(name), ConfigType::String, def, std::move(doc)));
}
ConfigKey& ConfigSchema::add_enum(std::string name, std::string def,
                                  std::vector<std::string> choices, std::string doc) {
  ConfigKey key = make_key(std::move(name), ConfigType::Enum, def, std::move(doc));
  key.choices = std::move(choices);
  return add(std::move(key));
}
ConfigKey& ConfigSchema::add_int_list(std::string name, std::vector<int64_t> def, std::string doc) {
  return add(make_key(std::move(name), ConfigType::IntList, def, std::move(doc)));
}
ConfigKey& ConfigSchema::add_string_list(std::string name, std::vector<std::string> def,
                                         std::string doc) {
  return add(make_key(std::move(name), ConfigType::StringList, def, std::move(doc)));
}

std::optional<size_t> ConfigSchema::index_of(std::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

bool ConfigSchema::is_section(std::string_view name) const {
  if (name.empty()) return false;
  const auto it = index_.lower_bound(name);
  // Keys sharing the prefix sort right after it; '.' follows the prefix in a member's path.
  for (auto i = it; i != index_.end() && i->first.compare(0, name.size(), name) == 0; ++i)
    if (i->first.size() > name.size() && i->first[name.size()] == '.') return true;
  return false;
}

std::string ConfigSchema::nearest(std::string_view name) const {
  const std::string n = lower(name);
  const std::string_view n_leaf = leaf_of(n), n_section = section_of(n);
  size_t best_score = std::numeric_limits<size_t>::max();
  std::string best;
  for (const ConfigKey& key : keys_) {
    const std::string k = lower(key.name);
    const std::string_view k_leaf = leaf_of(k);
    const size_t other_section = section_of(k) == n_section ? 0 : 1;
    // A typo in the whole path, or the right name in the wrong section ("seq_len" at the top).
    // A leaf counts only when most of it survives: "bar" is two edits from "lr", but no typo of
    // it ("train.foo.bar" suggested optim.lr).
    const size_t leaf_d = edit_distance(n_leaf, k_leaf);
    const size_t leaf_score = 2 * leaf_d < std::max(n_leaf.size(), k_leaf.size())
                                  ? leaf_d + other_section
                                  : std::numeric_limits<size_t>::max();
    size_t score = std::min(edit_distance(n, k), leaf_score);
    // A shortened or lengthened name ("layers" for "num_layers"), scored behind plain typos.
    const std::string_view shorter = n_leaf.size() < k_leaf.size() ? n_leaf : k_leaf;
    const std::string_view longer = n_leaf.size() < k_leaf.size() ? k_leaf : n_leaf;
    if (shorter.size() >= 4 && longer.find(shorter) != std::string_view::npos)
      score = std::min(score, 3 + other_section);
    if (score < best_score) best_score = score, best = key.name;
  }
  const size_t limit = std::max<size_t>(3, n_leaf.size() / 3);
  return best_score <= limit ? best : "";
}

std::string ConfigSchema::markdown() const {
  // Pipes inside a cell would end it.
  auto cell = [](std::string s) {
    std::string out;
    for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
    return out;
  };
  std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const ConfigKey& k : keys_) {
    std::string type = k.type == ConfigType::Enum
                           ? fmt::format("`{}`", fmt::join(k.choices, "` \\| `"))
                           : k.type_text();
    if (type.rfind("an ", 0) == 0) type = type.substr(3);
    if (type.rfind("a ", 0) == 0) type = type.substr(2);
    if (!k.range_text().empty()) type += ", " + k.range_text();
    out += fmt::format("| `{}` | {} | `{}` | {} |\n", k.name, type, cell(k.default_value.dump()),
                       cell(k.doc));
  }
  return out;
}

// ---- JsonConfig -------------------------------------------------------------------------------

std::string config_key_of_pointer(const std::string& pointer) {
  std::string key = pointer.size() > 1 ? pointer.substr(1) : pointer;
  std::replace(key.begin(), key.end(), '/', '.');
  return key;
}

JsonConfig::JsonConfig(ConfigSchema schema) : schema_(std::move(schema)) {
  for (const ConfigKey& k : schema_.keys()) {
    values_.push_back(checked_value(k, k.default_value, "the schema's defaults"));
    origins_.push_back("default");
  }
}

void JsonConfig::load_file(const std::string& path) {
  // A directory would read as empty text ("malformed JSON ... unexpected end of input"). Pipes
  // stay allowed: --config <(generate) and /dev/stdin are read to their end as any file.
  std::error_code ec;
  RA_CHECK(!std::filesystem::is_directory(path, ec),
           "config file '{}' is a directory, not a JSON file", path);
  std::ifstream in(path, std::ios::binary);
  RA_CHECK(in, "cannot open config file '{}'", path);
  // Bounded: /dev/zero or a mistaken data file must not fill the memory before the parser speaks.
  std::string text;
  char chunk[65536];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) {
    text.append(chunk, size_t(in.gcount()));
    RA_CHECK(text.size() <= kMaxConfigBytes,
             "config file '{}' is larger than {} MiB: not a config file", path,
             kMaxConfigBytes >> 20);
  }
  RA_CHECK(!in.bad(), "cannot read config file '{}'", path);
  RA_CHECK(!text.empty() || std::filesystem::is_regular_file(path, ec),
           "config file '{}' gave no text (a pipe or standard input that was empty here; under "
           "mpirun only rank 0 reads standard input: give every rank a file)",
           path);
  load_text(text, path);
}

void JsonConfig::load_text(std::string_view text, const std::string& source) {
  // nlohmann keeps the last of two equal keys of one object and drops the first without a word
  // ({"train": {"steps": 3}, "train": {"seq_len": 64}} would lose train.steps): the parser's
  // callback sees every key, so a repeated one is an error naming it.
  struct Container {
    bool object = false;
    std::string path;  // "" for the top level, "train" for its section, "x[]" inside arrays
    std::set<std::string> keys;
    std::string key;  // the last key read (objects)
  };
  std::vector<Container> open;
  const auto child_path = [&open]() -> std::string {
    if (open.empty()) return {};
    const Container& c = open.back();
    const std::string name = c.object ? c.key : "[]";
    if (c.path.empty()) return name;
    return c.object ? c.path + "." + name : c.path + name;
  };
  // A NUL ends the parser's input early: what follows would be ignored, not refused.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    const auto [line, column] = line_column(text, nul);
    RA_FAIL("malformed JSON in {} at line {}, column {}: a NUL byte (not JSON text)", source, line,
            column);
  }
  const json::parser_callback_t watch = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start: {
        // A config nests three levels; thousands would cost memory quadratic in the depth here.
        RA_CHECK(depth < kMaxConfigDepth,
                 "malformed config in {}: objects and arrays nested more than {} deep", source,
                 kMaxConfigDepth);
        std::string path = child_path();
        open.push_back({event == json::parse_event_t::object_start, std::move(path), {}, {}});
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key: {
        Container& c = open.back();
        c.key = parsed.get<std::string>();
        RA_CHECK(c.keys.insert(c.key).second,
                 "{} is given twice in {} (one object repeats the key '{}'; JSON keeps only one)",
                 c.path.empty() ? c.key : c.path + "." + c.key, source, c.key);
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), watch);
  } catch (const json::parse_error& e) {
    const auto [line, column] = line_column(text, e.byte);
    RA_FAIL("malformed JSON in {} at line {}, column {}: {}", source, line, column,
            parse_error_reason(e.what()));
  } catch (const json::out_of_range& e) {
    // Well-formed but unrepresentable, e.g. a number beyond a double (3e2048); found by the
    // config fuzzer (test/fuzz), where it escaped as an uncaught nlohmann exception.
    const std::string what = e.what();  // "[json.exception.out_of_range.406] number overflow ..."
    const auto end = what.find("] ");
    RA_FAIL("malformed JSON in {}: {}", source,
            end == std::string::npos ? what : what.substr(end + 2));
  }
  RA_CHECK(doc.is_object(), "{} must hold one JSON object ({{...}}), found {}", source,
           doc.type_name());
  std::set<std::string> seen;
  load_object(doc, "", source, seen);
}

void JsonConfig::load_object(const json& object, const std::string& prefix,
                             const std::string& source, std::set<std::string>& seen) {
  for (const auto& [name, v] : object.items()) {
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    if (schema_.index_of(path)) {
      // {"train.seq_len": 1, "train": {"seq_len": 2}} names one key twice; which one wins would
      // be an accident of order, so it is an error.
      RA_CHECK(seen.insert(path).second, "{} is given twice in {}", path, source);
      set_value(path, v, source);
    } else if (schema_.is_section(path)) {
      if (!v.is_object()) section_not_object(schema_, path, source);
      load_object(v, path, source, seen);
    } else {
      // Name the full path of the first value inside an unknown object ("trian.steps", not
      // "trian"), which is what the nearest valid key is found for.
      std::string full = path;
      for (const json* inner = &v; inner->is_object() && !inner->empty();
           inner = &inner->begin().value())
        full += "." + inner->begin().key();
      unknown_key(schema_, full, source);
    }
  }
}

void JsonConfig::set(std::string_view assignment) {
  if (const size_t bad = invalid_utf8_at(assignment); bad != std::string_view::npos)
    RA_FAIL(
        "--set: byte {} of the assignment (0x{:02X}, after '{}') is not UTF-8; config keys and "
        "values must be UTF-8 text, as JSON requires (a path with other bytes cannot be set)",
        bad + 1, static_cast<unsigned char>(assignment[bad]), assignment.substr(0, bad));
  const auto eq = assignment.find('=');
  RA_CHECK(eq != std::string_view::npos && eq > 0,
           "--set '{}': expected KEY=VALUE, such as --set train.seq_len=4096", assignment);
  const std::string key = trim(assignment.substr(0, eq));
  const std::string text(assignment.substr(eq + 1));
  const auto index = schema_.index_of(key);
  if (!index) {
    if (schema_.is_section(key)) section_not_object(schema_, key, "--set");
    unknown_key(schema_, key, "--set");
  }
  set_value(key, parse_set_value(schema_.keys()[*index], text), "--set");
}

void JsonConfig::set_value(std::string_view key, const json& value, const std::string& source) {
  const auto index = schema_.index_of(key);
  if (!index) unknown_key(schema_, key, source);
  values_[*index] = checked_value(schema_.keys()[*index], value, source);
  origins_[*index] = source;
}

size_t JsonConfig::require(std::string_view key, ConfigType a, ConfigType b) const {
  const auto index = schema_.index_of(key);
  RA_CHECK(index, "internal: config key '{}' is not in the schema", key);
  const ConfigType t = schema_.keys()[*index].type;
  RA_CHECK(t == a || t == b, "internal: config key '{}' read with the wrong type", key);
  return *index;
}

int64_t JsonConfig::get_int(std::string_view key) const {
  return values_[require(key, ConfigType::Int, ConfigType::Int)].get<int64_t>();
}
double JsonConfig::get_float(std::string_view key) const {
  return values_[require(key, ConfigType::Float, ConfigType::Float)].get<double>();
}
bool JsonConfig::get_bool(std::string_view key) const {
  return values_[require(key, ConfigType::Bool, ConfigType::Bool)].get<bool>();
}
const std::string& JsonConfig::get_string(std::string_view key) const {
  return values_[require(key, ConfigType::String, ConfigType::Enum)].get_ref<const std::string&>();
}
std::vector<int64_t> JsonConfig::get_int_list(std::string_view key) const {
  return values_[require(key, ConfigType::IntList, ConfigType::IntList)]
      .get<std::vector<int64_t>>();
}
std::vector<std::string> JsonConfig::get_string_list(std::string_view key) const {
  return values_[require(key, ConfigType::StringList, ConfigType::StringList)]
      .get<std::vector<std::string>>();
}

const json& JsonConfig::value(std::string_view key) const {
  const auto index = schema_.index_of(key);
  RA_CHECK(index, "internal: config key '{}' is not in the schema", key);
  return values_[*index];
}

const std::string& JsonConfig::origin(std::string_view key) const {
  const auto index = schema_.index_of(key);
  RA_CHECK(index, "internal: config key '{}' is not in the schema", key);
  return origins_[*index];
}

nlohmann::ordered_json JsonConfig::to_json() const {
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  for (size_t i = 0; i < values_.size(); ++i) {
    const std::string& name = schema_.keys()[i].name;
    nlohmann::ordered_json* node = &root;
    size_t start = 0;
    for (size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1)
      node = &(*node)[name.substr(start, dot - start)];
    (*node)[name.substr(start)] = nlohmann::ordered_json(values_[i]);
  }
  return root;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  // One row of the Levenshtein table at a time.
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace ringattn
