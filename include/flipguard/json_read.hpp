#pragma once
/// \file
/// Typed reads of the JSON in files from elsewhere (checkpoints, model file headers): each
/// checks that the member is there and of the type asked for, and throws Error naming `where`
/// (e.g. "checkpoint 'out/checkpoint.json'"), the member and what it holds. nlohmann's own
/// accessors would throw their own exceptions, convert a float such as 1e300 to an integer
/// (undefined behaviour), or, through a const operator[], read past a missing member.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace flipguard {

/// Member `key` of object `o`; throws when `o` is no object or has no such member.
const nlohmann::json& json_member(const nlohmann::json& o, const std::string& key,
                                  const std::string& where);

/// Member `key` of `o`, or nullptr when `o` is no object or has no such member.
const nlohmann::json* json_find(const nlohmann::json& o, const std::string& key);

/// `v` (named `name` in messages) as a whole number within [lo, hi].
int64_t json_whole(const nlohmann::json& v, const std::string& name, const std::string& where,
                   int64_t lo = std::numeric_limits<int64_t>::min(),
                   int64_t hi = std::numeric_limits<int64_t>::max());

/// `v` as a finite number.
double json_number(const nlohmann::json& v, const std::string& name, const std::string& where);

/// `v` as a string.
std::string json_string(const nlohmann::json& v, const std::string& name, const std::string& where);

/// `v` as an array of whole numbers within [lo, hi].
std::vector<int64_t> json_wholes(const nlohmann::json& v, const std::string& name,
                                 const std::string& where,
                                 int64_t lo = std::numeric_limits<int64_t>::min(),
                                 int64_t hi = std::numeric_limits<int64_t>::max());

/// `v` as an array of finite numbers.
std::vector<double> json_numbers(const nlohmann::json& v, const std::string& name,
                                 const std::string& where);

}  // namespace flipguard
