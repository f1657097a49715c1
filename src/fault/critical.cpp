// The neurons of a limited exhaustive campaign: positions in the most critical feature maps.
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>

#include <algorithm>

namespace flipguard {

CriticalNeurons select_critical_neurons(const QuantizedNetwork& q, const torch::Tensor& images,
                                        const torch::Tensor& labels, int64_t top_features,
                                        int64_t positions, uint64_t seed) {
  if (top_features < 1) fail("top_features ", top_features, ": expected at least 1");
  if (positions < 1) fail("positions ", positions, ": expected at least 1");
  const auto features =
      most_critical_features(site_criticality(q, mean_relevance(q, images, labels)), top_features);
  CriticalNeurons out;
  for (const auto& f : features)
    if (std::find(out.sites.begin(), out.sites.end(), f.site) == out.sites.end())
      out.sites.push_back(f.site);
  std::sort(out.sites.begin(), out.sites.end());
  const FaultSpace space = fault_space(q, FaultTarget::Activations, out.sites);
  const auto shapes = q.network().shapes();
  for (size_t i = 0; i < features.size(); ++i) {
    const CriticalFeature& f = features[i];
    const Shape& s = shapes[f.site];
    const int64_t plane = s.h * s.w;
    Rng rng(derive_seed(seed, kCriticalPositionsStream + i));
    const std::vector<int64_t> at = draw_distinct(plane, std::min(plane, positions), rng);
    const int64_t base = space.tensors[space.tensor_of(f.site)].offset + f.channel * plane;
    for (int64_t p : at) out.elements.push_back(base + p);
    out.features.push_back({f.site, f.channel, f.eta, static_cast<int64_t>(at.size())});
  }
  std::sort(out.elements.begin(), out.elements.end());
  return out;
}

nlohmann::json selection_json(const CriticalNeurons& c, const Network& net, int64_t top_features,
                              int64_t positions, int64_t relevance_images) {
  nlohmann::json chosen = nlohmann::json::array();
  for (const CriticalNeuronsFeature& f : c.features)
    chosen.push_back({{"site", f.site},
                      {"name", net.blocks[f.site].name},
                      {"channel", f.channel},
                      {"eta", f.eta},
                      {"positions", f.positions}});
  return {{"top_features", top_features}, {"positions", positions},
          {"relevance_images", relevance_images}, {"features", chosen}};
}

}  // namespace flipguard
