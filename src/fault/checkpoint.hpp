#pragma once
/// \file
/// Private to src/fault (and its fuzz target): the checkpoint file of a campaign, written by
/// run_campaign between steps and read back by a resumed run.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace flipguard::checkpoint_detail {

/// The CRC-32 of a checkpoint's JSON text without its "crc32" member (nlohmann::json keeps
/// members sorted and prints numbers so that they read back the same, so a checkpoint read
/// back dumps to the text it was written from).
uint32_t checkpoint_crc(nlohmann::json j);

/// Writes a checkpoint atomically: the campaign's fingerprint, the failures of every fault set
/// (-1: pending), the time spent and, from an image-major engine, the partial counts.
void save_checkpoint(const std::string& path, const nlohmann::json& fingerprint,
                     const std::vector<int64_t>& failures, double seconds,
                     const nlohmann::json& partial = nullptr);

/// A checkpoint: the failures of the finished fault sets (-1: pending) and, from an image-major
/// engine, the partial counts of the pending ones over the first images (null when none).
struct Checkpoint {
  std::vector<int64_t> failures;
  double seconds = 0;
  nlohmann::json partial;
};

/// Reads a checkpoint of a campaign of `size` fault sets over `images` images; refuses one that
/// is damaged (its CRC-32), of another campaign, or whose counts could not come from this one.
Checkpoint load_checkpoint(const std::string& path, const nlohmann::json& fingerprint,
                           int64_t size, int64_t images);

/// Where an image-major run stands: every pending fault set has counted images [0, from); the
/// first `sets_done` of them have counted [from, to) too (a step inside an image chunk).
struct ImageMajorState {
  int64_t from = 0, to = 0, sets_done = 0;
};

/// The "partial" member of a checkpoint for `st` and the counts of the pending fault sets.
nlohmann::json partial_json(const ImageMajorState& st, const std::vector<int64_t>& counts);

/// The partial counts of an image-major run from a checkpoint (`path` names it in errors):
/// where it stands, and into `counts` (sized to the pending fault sets) their counts; nothing
/// done and `counts` untouched when `partial` is null. Refuses counts this run cannot have made.
ImageMajorState partial_counts(const nlohmann::json& partial, const std::string& path,
                               int64_t images, std::vector<int64_t>& counts);

}  // namespace flipguard::checkpoint_detail
