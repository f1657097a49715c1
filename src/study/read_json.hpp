#pragma once
// Within src/study: the JSON files a study reads back (study.json, the stages' results).
#include <nlohmann/json.hpp>

#include <string>

namespace flipguard::study_detail {

/// The JSON of `path`; throws Error naming the file when it is missing or not valid JSON.
nlohmann::json read_json(const std::string& path);

}  // namespace flipguard::study_detail
