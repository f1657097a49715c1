// Typed reads of JSON from files (include/flipguard/json_read.hpp).
#include <flipguard/error.hpp>
#include <flipguard/json_read.hpp>

#include <cmath>

namespace flipguard {

namespace {

/// What a value is, for messages: its text when short, else its type.
std::string shown(const nlohmann::json& v) {
  std::string text = v.dump();
  return text.size() <= 40 ? text : std::string("a ") + v.type_name();
}

}  // namespace

const nlohmann::json* json_find(const nlohmann::json& o, const std::string& key) {
  if (!o.is_object()) return nullptr;
  const auto it = o.find(key);
  return it == o.end() ? nullptr : &*it;
}

const nlohmann::json& json_member(const nlohmann::json& o, const std::string& key,
                                  const std::string& where) {
  if (!o.is_object()) fail(where, ": expected an object holding ", key, ", found ", shown(o));
  const nlohmann::json* v = json_find(o, key);
  if (!v) fail(where, ": ", key, " is missing");
  return *v;
}

int64_t json_whole(const nlohmann::json& v, const std::string& name, const std::string& where,
                   int64_t lo, int64_t hi) {
  const bool whole = v.is_number_integer() &&
                     !(v.is_number_unsigned() &&
                       v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  const int64_t x = whole ? v.get<int64_t>() : 0;
  if (!whole || x < lo || x > hi)
    fail(where, ": ", name, " is ", shown(v), ", expected a whole number from ", lo, " to ", hi);
  return x;
}

double json_number(const nlohmann::json& v, const std::string& name, const std::string& where) {
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    fail(where, ": ", name, " is ", shown(v), ", expected a number");
  return v.get<double>();
}

std::string json_string(const nlohmann::json& v, const std::string& name, const std::string& where) {
  if (!v.is_string()) fail(where, ": ", name, " is ", shown(v), ", expected a string");
  return v.get<std::string>();
}

std::vector<int64_t> json_wholes(const nlohmann::json& v, const std::string& name,
                                 const std::string& where, int64_t lo, int64_t hi) {
  if (!v.is_array()) fail(where, ": ", name, " is ", shown(v), ", expected an array of whole numbers");
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(json_whole(v[i], name + "[" + std::to_string(i) + "]", where, lo, hi));
  return out;
}

std::vector<double> json_numbers(const nlohmann::json& v, const std::string& name,
                                 const std::string& where) {
  if (!v.is_array()) fail(where, ": ", name, " is ", shown(v), ", expected an array of numbers");
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(json_number(v[i], name + "[" + std::to_string(i) + "]", where));
  return out;
}

}  // namespace flipguard
