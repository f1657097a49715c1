// A campaign on an image set, its golden run split into chunks of images where the stored codes
// of one run would take too much memory (MobileNetV2 keeps ~7 MB per image).
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>

#include <algorithm>
#include <filesystem>
#include <tuple>

namespace flipguard {

std::string chunk_checkpoint_path(const std::string& checkpoint, int64_t chunk, int64_t chunks) {
  if (chunks < 1 || chunk < 0 || chunk >= chunks)
    fail("checkpoint of chunk ", chunk, " of ", chunks, ": expected 0 <= chunk < chunks");
  if (chunks == 1 || checkpoint.empty()) return checkpoint;
  std::filesystem::path p(checkpoint);
  const std::string ext = p.extension().string();
  p.replace_extension(".chunk" + std::to_string(chunk) + "of" + std::to_string(chunks) + ext);
  return p.string();
}

std::pair<int64_t, int64_t> golden_chunks(const QuantizedNetwork& q, int64_t images,
                                          int64_t golden_bytes) {
  if (golden_bytes < 0) fail("golden_bytes ", golden_bytes, ": expected at least 0 (0: no limit)");
  if (images < 0) fail("images ", images, ": expected at least 0");
  // Even chunks, as many as the limit asks for.
  int64_t per = images;
  if (golden_bytes > 0) per = std::max<int64_t>(1, golden_bytes / GoldenRun::bytes_per_image(q));
  const int64_t chunks = images > per ? (images + per - 1) / per : 1;
  return {chunks, (images + chunks - 1) / chunks};
}

ImageCampaign run_image_campaign(const CampaignPlan& plan, const QuantizedNetwork& q,
                                 const torch::Tensor& images, const torch::Tensor& labels,
                                 const ImageCampaignOptions& o) {
  if (images.size(0) != labels.size(0))
    fail("campaign on ", images.size(0), " images but ", labels.size(0), " labels");
  const int64_t n = images.size(0);
  ImageCampaign out;
  std::tie(out.chunks, out.chunk_images) = golden_chunks(q, n, o.golden_bytes);
  out.counts.failures.assign(static_cast<size_t>(plan.size()), 0);
  const int64_t share = (plan.size() - o.run.rank + o.run.ranks - 1) / std::max(1, o.run.ranks);
  for (int64_t k = 0; k < out.chunks; ++k) {
    const int64_t s = std::min(n, k * out.chunk_images), e = std::min(n, s + out.chunk_images);
    const std::string phase = out.chunks == 1 ? std::string("golden run")
                                              : "golden run " + std::to_string(k + 1) + "/" +
                                                    std::to_string(out.chunks);
    const ProgressFn progress =
        o.progress ? ProgressFn([&](const Progress& p) { o.progress({phase, p.done, p.total, p.unit}); })
                   : ProgressFn();
    const GoldenRun golden(q, images.slice(0, s, e), labels.slice(0, s, e), 500, progress);
    out.golden.images += golden.images();
    out.golden.correct += golden.correct();
    auto engine = make_engine(o.engine, q, golden, plan.options().target, o.engine_options);
    RunOptions r = o.run;
    r.checkpoint = chunk_checkpoint_path(o.run.checkpoint, k, out.chunks);
    if (out.chunks > 1) {
      r.checkpoint_at_end = true;  // a finished chunk is not run again after a later stop
      r.fingerprint["golden_chunk"] = {{"chunk", k}, {"chunks", out.chunks}, {"first_image", s},
                                       {"images", e - s}};
      r.progress = [&, k](const CampaignProgress& p) {
        if (!o.run.progress) return;
        // Fault sets' worth of work over all chunks: each chunk is 1/chunks of every set.
        CampaignProgress all = p;
        all.done = (k * share + p.done) / out.chunks;
        all.total = share;
        all.seconds_left = -1;
        o.run.progress(all);
      };
    }
    if (!r.checkpoint.empty()) out.checkpoints.push_back(r.checkpoint);
    const CampaignCounts c = run_campaign(plan, *engine, golden.correct(), r);
    if (o.on_engine) o.on_engine(*engine);
    out.counts.seconds += c.seconds;
    for (size_t i = 0; i < c.failures.size(); ++i) {
      int64_t& f = out.counts.failures[i];
      f = f < 0 || c.failures[i] < 0 ? -1 : f + c.failures[i];
    }
    // Stopped (stop_after): a resume continues with this chunk. Under MPI the other processes'
    // fault sets are -1 here; this process's own must be complete.
    bool mine = true;
    for (int64_t i = r.rank; i < plan.size(); i += r.ranks)
      mine = mine && c.failures[static_cast<size_t>(i)] >= 0;
    if (!mine) break;
  }
  return out;
}

}  // namespace flipguard
