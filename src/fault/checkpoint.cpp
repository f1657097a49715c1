// The checkpoint file of a campaign (src/fault/checkpoint.hpp).
#include "checkpoint.hpp"

#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/json_read.hpp>
#include <flipguard/report.hpp>

#include <algorithm>

namespace flipguard::checkpoint_detail {

namespace {
constexpr const char* kCheckpointFormat = "flipguard-campaign-checkpoint";
/// Version 2 adds "crc32", the CRC-32 of the checkpoint's JSON without it.
constexpr int kCheckpointVersion = 2;

}  // namespace

uint32_t checkpoint_crc(nlohmann::json j) {
  j.erase("crc32");
  const std::string text = j.dump();
  return crc32_of(text.data(), text.size());
}

void save_checkpoint(const std::string& path, const nlohmann::json& fingerprint,
                     const std::vector<int64_t>& failures, double seconds,
                     const nlohmann::json& partial) {
  nlohmann::json j = {{"format", kCheckpointFormat},
                      {"version", kCheckpointVersion},
                      {"fingerprint", fingerprint},
                      {"seconds", seconds},
                      {"failures", failures}};
  if (!partial.is_null()) j["partial"] = partial;
  j["crc32"] = checkpoint_crc(j);
  write_file_atomic(path, j.dump());
}

Checkpoint load_checkpoint(const std::string& path, const nlohmann::json& fingerprint,
                           int64_t size, int64_t images) {
  const nlohmann::json j = read_json(path, "checkpoint");
  // Every member is checked for its presence and type (json_read.hpp): a damaged or hand-edited
  // checkpoint comes out as an Error.
  const std::string where = "checkpoint '" + path + "'";
  const nlohmann::json* format = json_find(j, "format");
  if (!format || !format->is_string() || format->get<std::string>() != kCheckpointFormat)
    fail("'", path, "' is not a flipguard campaign checkpoint");
  const nlohmann::json* version = json_find(j, "version");
  const int64_t v = version && version->is_number_integer() ? version->get<int64_t>() : 0;
  if (v != kCheckpointVersion)
    fail(where, " has version ", v, ", expected ", kCheckpointVersion,
         " (a checkpoint of another flipguard version: start the campaign again without resume)");
  const nlohmann::json* crc = json_find(j, "crc32");
  if (!crc || !crc->is_number_unsigned() || crc->get<uint64_t>() != checkpoint_crc(j))
    fail(where, " is damaged: its CRC-32 does not match its contents");
  const nlohmann::json* fp = json_find(j, "fingerprint");
  if (!fp || *fp != fingerprint)
    fail(where, " belongs to another campaign: it has ",
         fp ? fp->dump() : std::string("no fingerprint"), ", this run is ", fingerprint.dump());
  Checkpoint c;
  c.failures = json_wholes(json_member(j, "failures", where), "failures", where);
  c.seconds = json_number(json_member(j, "seconds", where), "seconds", where);
  if (const nlohmann::json* partial = json_find(j, "partial")) c.partial = *partial;
  if (static_cast<int64_t>(c.failures.size()) != size)
    fail("checkpoint '", path, "' holds ", c.failures.size(), " fault sets, the campaign has ", size);
  for (size_t i = 0; i < c.failures.size(); ++i)
    if (c.failures[i] < -1 || c.failures[i] > images)
      fail("checkpoint '", path, "': fault set ", i, " has ", c.failures[i],
           " failures; expected -1 (pending) to ", images, " (the images of the campaign)");
  if (!(c.seconds >= 0)) fail("checkpoint '", path, "': time spent ", c.seconds, " is negative");
  return c;
}

nlohmann::json partial_json(const ImageMajorState& st, const std::vector<int64_t>& counts) {
  nlohmann::json p = {{"images", st.from}, {"failures", counts}};
  if (st.sets_done > 0) {
    p["chunk_end"] = st.to;
    p["sets_done"] = st.sets_done;
  }
  return p;
}

ImageMajorState partial_counts(const nlohmann::json& partial, const std::string& path,
                               int64_t images, std::vector<int64_t>& counts) {
  ImageMajorState st;
  if (partial.is_null()) return st;
  const std::string where = "checkpoint '" + path + "', partial counts";
  st.from = json_whole(json_member(partial, "images", where), "images", where);
  std::vector<int64_t> f = json_wholes(json_member(partial, "failures", where), "failures", where);
  const nlohmann::json* sets_done = json_find(partial, "sets_done");
  const nlohmann::json* chunk_end = json_find(partial, "chunk_end");
  st.sets_done = sets_done ? json_whole(*sets_done, "sets_done", where) : 0;
  st.to = chunk_end ? json_whole(*chunk_end, "chunk_end", where) : st.from;
  const int64_t n = static_cast<int64_t>(counts.size());
  if (static_cast<int64_t>(f.size()) != n || st.from < 0 || st.from > images)
    fail("checkpoint '", path, "' has partial counts of ", f.size(), " fault sets over ", st.from,
         " images; expected ", n, " fault sets over at most ", images, " images");
  if (st.sets_done < 0 || st.sets_done >= std::max<int64_t>(1, n) ||
      (st.sets_done > 0 && (st.to <= st.from || st.to > images)))
    fail("checkpoint '", path, "' stops ", st.sets_done, " fault sets into images [", st.from,
         ", ", st.to, "); expected fewer than ", n, " fault sets into a range within [0, ", images,
         ")");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t upto = i < st.sets_done ? st.to : st.from;
    if (f[i] < 0 || f[i] > upto)
      fail("checkpoint '", path, "': partial count ", i, " is ", f[i], " failures over ", upto,
           " images; expected 0 to ", upto);
  }
  counts = std::move(f);
  return st;
}

}  // namespace flipguard::checkpoint_detail
