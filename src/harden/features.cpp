#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace flipguard {

torch::Tensor adjust_weights(const torch::Tensor& weight, const torch::Tensor& eta,
                             int64_t groups) {
  if (!weight.defined() || (weight.dim() != 4 && weight.dim() != 2))
    fail("eq. 6: weights must be K x C x U x V or K x (C*H*W), got ",
         weight.defined() ? weight.sizes() : c10::IntArrayRef{});
  if (groups < 1 || (groups > 1 && weight.dim() != 4) || weight.size(0) % groups != 0)
    fail("eq. 6: ", groups, " groups for weights of shape ", weight.sizes(),
         ": expected 1, or a number of groups that divides a convolution's outputs");
  const auto e = eta.to(torch::kFloat64).contiguous();
  if (e.dim() != 1 || e.size(0) < 1) fail("eq. 6: criticality must be a vector of C values");
  const int64_t c = e.size(0);
  const int64_t per = weight.dim() == 4 ? 1 : weight.size(1) / c;
  if ((weight.dim() == 4 && weight.size(1) * groups != c) ||
      (weight.dim() == 2 && (weight.size(1) % c != 0 || per < 1)))
    fail("eq. 6: ", c, " criticality values for weights of shape ", weight.sizes(),
         groups > 1 ? " in " + std::to_string(groups) + " groups" : std::string(),
         ": expected one per input feature");
  const auto* v = e.data_ptr<double>();
  double sum = 0;
  for (int64_t i = 0; i < c; ++i) {
    if (!std::isfinite(v[i]) || v[i] < 0)
      fail("eq. 6: criticality of feature ", i, " is ", v[i], ": expected a finite value >= 0");
    sum += v[i];
  }
  if (!(sum > 0)) fail("eq. 6: every feature has criticality 0: nothing to equalize");
  // factor_c = Σ η / (C · η_c); 1 where η_c = 0.
  auto factor = torch::ones({c}, torch::kFloat64);
  auto* f = factor.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i)
    if (v[i] > 0) f[i] = sum / (static_cast<double>(c) * v[i]);
  const auto w = weight.to(torch::kFloat64);
  torch::Tensor scaled;
  if (weight.dim() == 4 && groups > 1) {
    // Output k of group g reads features g·C/G .. (g+1)·C/G − 1 as its inputs 0 .. C/G − 1.
    const int64_t k = w.size(0), cg = c / groups;
    scaled = (w.view({groups, k / groups, cg, w.size(2), w.size(3)}) *
              factor.view({groups, 1, cg, 1, 1}))
                 .view(w.sizes());
  } else if (weight.dim() == 4) {
    scaled = w * factor.view({1, c, 1, 1});
  } else {
    scaled = (w.view({w.size(0), c, per}) * factor.view({1, c, 1})).view(w.sizes());
  }
  return scaled.to(weight.scalar_type());
}

}  // namespace flipguard

namespace flipguard {

std::vector<torch::Tensor> site_etas(const QuantizedNetwork& q, const torch::Tensor& images,
                                     const torch::Tensor& labels, const RelevanceOptions& o) {
  const MeanRelevance r = mean_relevance(q, images, labels, o);
  std::vector<torch::Tensor> etas(q.network().blocks.size());
  for (const SiteCriticality& s : site_criticality(q, r)) etas[s.block] = s.eta;
  return etas;
}

std::vector<int> shortcut_sites(const Network& net) {
  std::vector<int> sites;
  for (int s : net.sites()) {
    const auto& blocks = net.blocks;
    const bool added = std::any_of(blocks.begin() + s + 1, blocks.end(), [s](const Block& r) {
      return r.op == Op::Add && std::find(r.inputs.begin(), r.inputs.end(), s) != r.inputs.end();
    });
    const bool weighted = std::any_of(blocks.begin() + s + 1, blocks.end(), [s](const Block& r) {
      return r.weighted() && r.inputs.at(0) == s;
    });
    if (added && weighted) sites.push_back(s);
  }
  return sites;
}

Network adjust_network(const Network& net, const std::vector<torch::Tensor>& etas,
                       std::vector<int>* adjusted) {
  if (etas.size() != net.blocks.size())
    fail("eq. 6: criticality for ", etas.size(), " blocks, the network has ", net.blocks.size());
  Network out = net.clone();
  if (adjusted) adjusted->clear();
  const std::vector<int> shortcuts = shortcut_sites(net);
  for (size_t b = 0; b < out.blocks.size(); ++b) {
    Block& blk = out.blocks[b];
    if (!blk.weighted()) continue;
    const int j = blk.inputs.at(0);
    if (j == Block::kNetworkInput || !etas[j].defined()) continue;
    if (std::find(shortcuts.begin(), shortcuts.end(), j) != shortcuts.end()) continue;
    blk.weight = adjust_weights(blk.weight, etas[j], blk.groups);
    if (adjusted) adjusted->push_back(static_cast<int>(b));
  }
  return out;
}

void check_finetuning(int iteration, double adjusted_accuracy, double finetune_train_accuracy,
                      double lr) {
  if (finetune_train_accuracy >= adjusted_accuracy - kFinetuneCollapse) return;
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << "feature optimization: the fine-tuning of iteration "
    << iteration << " diverged: training accuracy " << 100 * finetune_train_accuracy
    << "% in its last epoch, against " << 100 * adjusted_accuracy
    << "% 8-bit test accuracy of the adjusted model it started from; expected at least "
    << 100 * (adjusted_accuracy - kFinetuneCollapse) << "%. Try a lower lr (learning rate) than "
    << std::defaultfloat << lr;
  fail(s.str());
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Accuracies and Fig. 5b's spread of a quantized model.
FeatureIteration measure(const Network& net, const QuantFormats& formats, const Dataset& test,
                         const Dataset& rel, const RelevanceOptions& ro) {
  FeatureIteration it;
  const QuantizedNetwork q(net, formats);
  it.quantized_accuracy = q.accuracy(test.images, test.labels);
  it.float_accuracy = float_accuracy(net, test.images, test.labels);
  RelevanceOptions named = ro;  // a phase of its own beside the relevance of the adjustment
  named.progress = prefixed(ro.progress, "Fig. 5b ");
  const auto etas = site_etas(q, rel.images, rel.labels, named);
  for (size_t b = 0; b < etas.size(); ++b)
    if (etas[b].defined()) {
      it.sites.push_back(static_cast<int>(b));
      it.site_sd.push_back(normalized_sd(etas[b]));
    }
  it.mean_sd = mean_normalized_sd(etas);
  if (std::isnan(it.mean_sd))
    fail("Fig. 5b: no site has a criticality (no weighted block reads a site)");
  return it;
}

std::string describe(const FeatureIteration& it) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << "8-bit test accuracy " << 100 * it.quantized_accuracy
    << "% (float " << 100 * it.float_accuracy << "%), mean SD of normalized criticality "
    << std::setprecision(4) << it.mean_sd;
  return s.str();
}

}  // namespace

FeatureState optimize_features(FeatureState st, const Dataset& train, const Dataset& test,
                               const FeatureOptions& o,
                               const std::function<void(const std::string&)>& log,
                               const std::function<void(const FeatureState&)>& on_iteration) {
  if (o.iterations < 1) fail("iterations ", o.iterations, ": expected at least 1");
  if (o.relevance_images < 1)
    fail("relevance_images ", o.relevance_images, ": expected at least 1");
  if (train.size() == 0 || test.size() == 0) fail("feature optimization needs training and test images");
  if (st.finished) return st;
  const Dataset rel = train.head(o.relevance_images);
  const Dataset calib = train.head(o.quant.calibration_images);
  for (int s : shortcut_sites(st.net))
    log("eq. 6 leaves the readers of site " + std::to_string(s) + " ('" + st.net.blocks[s].name +
        "') as they are: an addition also reads it, unweighted (docs/harden.md)");
  // The options of iteration t, their progress named after it.
  auto of_iteration = [&](int t) {
    FeatureOptions p = o;
    if (!o.progress) return p;
    const std::string prefix =
        "iteration " + std::to_string(t) + "/" + std::to_string(o.iterations) + ": ";
    p.relevance.progress = prefixed(o.progress, prefix);
    p.quant.progress = p.relevance.progress;
    p.finetune.progress = [fn = o.progress, prefix](const TrainProgress& tp) {
      const double per_epoch = static_cast<double>(tp.batches);
      report(fn, prefix + "fine-tuning", (tp.epoch - 1) * per_epoch + tp.batch,
             tp.epochs * per_epoch, "batches");
    };
    return p;
  };
  if (st.history.empty()) {
    const auto t0 = Clock::now();
    st.history.push_back(measure(st.net, st.formats, test, rel, of_iteration(0).relevance));
    st.history.back().seconds = seconds_since(t0);
    log("iteration 0 (the input model): " + describe(st.history.back()));
  }
  for (int t = st.done + 1; t <= o.iterations; ++t) {
    const auto t0 = Clock::now();
    const FeatureOptions ot = of_iteration(t);
    // Lines 2-7: η on the current (fine-tuned) model, eq. 6 on every reader of a site.
    const auto etas = site_etas(QuantizedNetwork(st.net, st.formats), rel.images, rel.labels,
                                ot.relevance);
    st.net = adjust_network(st.net, etas);
    // The adjusted weights (and so the sites they write) need new formats.
    st.formats = calibrate(st.net, calib.images, ot.quant);
    FeatureIteration it = measure(st.net, st.formats, test, rel, ot.relevance);
    it.iteration = t;
    const bool reached = it.quantized_accuracy >= o.baseline;
    const bool last = t == o.iterations || (o.until_baseline && reached);
    log("iteration " + std::to_string(t) + " after the adjustment: " + describe(it) +
        (o.until_baseline ? (reached ? ", at least the baseline" : ", below the baseline") : ""));
    if (last) {
      it.seconds = seconds_since(t0);
      st.history.push_back(it);
      st.done = t;
      st.finished = true;
      st.reached = reached;
      return st;
    }
    // Line 9: quantization-aware fine-tuning in the formats just chosen.
    TrainOptions ft = ot.finetune;
    ft.quantized = st.formats;
    ft.batchnorm = false;
    ft.checkpoint.clear();
    ft.resume = false;
    ft.seed = o.finetune.seed + static_cast<uint64_t>(t);
    const EpochReport r = train_network(st.net, train, Dataset{}, ft, log);
    check_finetuning(t, it.quantized_accuracy, r.train_accuracy, ft.lr);
    it.finetune_train_accuracy = r.train_accuracy;
    it.seconds = seconds_since(t0);
    st.history.push_back(it);
    st.done = t;
    if (on_iteration) on_iteration(st);
  }
  st.finished = true;
  return st;
}

}  // namespace flipguard
