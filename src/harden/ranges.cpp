/// \file
/// Range restriction (Ranger, DSN 2021) as a baseline to the paper's feature optimization.
#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/quant.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace flipguard {

namespace {

/// The codes a block's activation lets through in format f: its bounds rounded (half up) as the
/// fixed-point pass rounds the clamped exact value; the word's range where it has none.
std::pair<int64_t, int64_t> activation_codes(const Block& b, const FixedPoint& f) {
  const auto code = [&f](double v, int64_t none) {
    if (std::isinf(v)) return none;
    const double c = std::floor(std::ldexp(v, f.frac) + 0.5);
    return static_cast<int64_t>(
        std::clamp(c, static_cast<double>(f.min_code()), static_cast<double>(f.max_code())));
  };
  return {code(b.act_lo(), f.min_code()), code(b.act_hi(), f.max_code())};
}

}  // namespace

QuantFormats restrict_ranges(const Network& net, const QuantFormats& q, const torch::Tensor& images,
                             int64_t batch) {
  if (!images.defined() || images.size(0) == 0)
    fail("range restriction needs at least one image to profile the sites on");
  QuantFormats plain = q;
  for (FixedPoint& f : plain.act) f.restricted = false;
  const QuantizedNetwork qn(net, plain);
  const std::vector<int> sites = net.sites();
  std::vector<int64_t> lo(net.blocks.size(), std::numeric_limits<int64_t>::max());
  std::vector<int64_t> hi(net.blocks.size(), std::numeric_limits<int64_t>::min());
  torch::NoGradGuard no_grad;
  batch = net.batch_within(batch);
  for (int64_t s = 0; s < images.size(0); s += batch) {
    const auto x = images.slice(0, s, std::min(images.size(0), s + batch));
    const std::vector<torch::Tensor> out = qn.forward_all(qn.quantize_input(x));
    for (int b : sites) {
      lo[b] = std::min(lo[b], static_cast<int64_t>(out[b].min().item<double>()));
      hi[b] = std::max(hi[b], static_cast<int64_t>(out[b].max().item<double>()));
    }
  }
  for (int b : sites) {
    FixedPoint& f = plain.act[b];
    // A ReLU or a clamp already bounds the site: the restriction is the narrower of the two (the
    // codes seen lie within the clamp's, so this only states it).
    const auto [clamp_lo, clamp_hi] = activation_codes(net.blocks[b], f);
    f.restricted = true;
    f.range_lo = std::max(lo[b], clamp_lo);
    f.range_hi = std::min(hi[b], clamp_hi);
  }
  return plain;
}

}  // namespace flipguard

namespace flipguard {

RangesRun harden_ranges(const Model& m, const Dataset& train, const Dataset& test,
                        const std::string& from, const std::string& command) {
  if (!m.quant)
    fail("range restriction of '", from, "': the model is float, expected a quantized model");
  check_images(m.net, train.images, train.name);
  RangesRun run;
  run.before = QuantizedNetwork(m.net, *m.quant).accuracy(test.images, test.labels);
  const QuantFormats restricted = restrict_ranges(m.net, *m.quant, train.images);
  run.after = QuantizedNetwork(m.net, restricted).accuracy(test.images, test.labels);
  nlohmann::json sites = nlohmann::json::array();
  for (int b : m.net.sites()) {
    const FixedPoint& f = restricted.act[b];
    sites.push_back({{"site", b},
                     {"name", m.net.blocks[b].name},
                     {"range", {f.range_lo, f.range_hi}},
                     {"format", f.str()}});
  }
  run.model = m;
  run.model.quant = restricted;
  run.model.meta["harden"] = {{"method", "ranges"},
                              {"command", command},
                              {"from", from},
                              {"range_images", train.size()},
                              {"sites", sites},
                              {"accuracy_before", run.before},
                              {"accuracy_after", run.after},
                              {"test_images", test.size()},
                              {"previous", m.meta.is_object()
                                               ? m.meta.value("harden", nlohmann::json())
                                               : nlohmann::json()}};
  run.model.meta["quantized_test_accuracy"] = run.after;
  return run;
}

}  // namespace flipguard
