#pragma once
/// \file
/// Resilience estimation by layer-wise relevance propagation (section III of the paper): the z+
/// rule (eq. 2), mean relevance over a data set (eq. 3), feature relevance (eq. 4), feature
/// bit-flip criticality (eq. 5), and how well the criticality ranks the failure rates that an
/// exhaustive fault-injection campaign measured. Rules, options and files: docs/relevance.md.
///
/// Relevance runs on the quantized model: the activations are the stored codes of every site
/// (QuantizedNetwork::forward_all) and the weights are the weight codes. The ratios of eq. 2 do
/// not depend on the scale of a layer's inputs or weights, so codes give the same relevance as
/// the real values they stand for.
// Validation reads the rates of exhaustive campaigns (read_campaign).
#include <flipguard/campaign.hpp>
#include <flipguard/quant.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace flipguard {

/// How relevance passes from the first layer to the network input, whose values may be
/// negative (CIFAR-10 after mean/std normalization).
enum class InputRule {
  Auto,   ///< z+ when no pre-processed pixel can be negative, z^B otherwise
  ZPlus,  ///< eq. 2 (for negative inputs in the general form max(0, f·w), see zplus_rule)
  ZB,     ///< z^B of Montavon et al. (2017), bounded by the lowest and highest input values
};

/// The names of the input rules, as the CLI takes them: "auto", "zplus", "zb".
const std::vector<std::string>& input_rule_names();
/// Parses an input rule; throws Error listing the valid names for an unknown one.
InputRule parse_input_rule(const std::string& name);
std::string to_string(InputRule r);
/// The rule `r` stands for on this network: Auto becomes ZPlus when the lowest input code of
/// every channel (a pixel of 0) is non-negative, ZB otherwise.
InputRule resolve_input_rule(const QuantizedNetwork& q, InputRule r);

/// How the relevance of a data set is computed.
struct RelevanceOptions {
  InputRule input_rule = InputRule::Auto;  ///< rule of the layers that read the network input
  int64_t batch = 100;                     ///< images propagated at once
  ProgressFn progress;                     ///< phase "relevance" (images), when set
};

/// Eq. 2, the z+ rule, through one convolution or fully-connected layer (its bias ignored):
/// r_in[j] = Σ_k z+_jk / (Σ_j' z+_j'k) · r_out[k] with z+_jk = max(0, f_j · w_jk), which is
/// f_j · max(0, w_jk) for the non-negative inputs behind a ReLU. An output whose denominator is
/// zero passes no relevance on. `layer` gives the geometry (op, stride, padding, dilation);
/// `in` is N x C x H x W, `weight` the layer's K x C x k x k (or K x C·H·W) weights and `r_out`
/// the relevance of its N x K x H' x W' (or N x K x 1 x 1) outputs. Returns N x C x H x W.
/// A grouped convolution (layer.groups > 1; `weight` K x C/groups x k x k) connects an output
/// only to the inputs of its group, so relevance stays inside the group.
torch::Tensor zplus_rule(const Block& layer, const torch::Tensor& weight, const torch::Tensor& in,
                         const torch::Tensor& r_out);

/// The z^B rule for a layer whose inputs lie in [low, high]: z_jk = f_j w_jk − l_j max(0, w_jk)
/// − h_j min(0, w_jk), never negative there. `low` and `high` are per input channel (C values).
/// Arguments and result otherwise as zplus_rule.
torch::Tensor zb_rule(const Block& layer, const torch::Tensor& weight, const torch::Tensor& in,
                      const torch::Tensor& low, const torch::Tensor& high,
                      const torch::Tensor& r_out);

/// Eq. 2 through an addition y = Σ_i x_i (a residual addition): the z+ rule with weights 1,
/// r_i = max(0, x_i) / Σ_i' max(0, x_i') · r_out element by element, so each input gets the
/// relevance of its positive contribution to the sum, and an output without one (every input
/// ≤ 0) passes nothing on. `in` are the inputs at one common scale (codes aligned to the
/// addition's common format), each of r_out's shape. Returns one tensor per input.
std::vector<torch::Tensor> addition_relevance(const std::vector<torch::Tensor>& in,
                                              const torch::Tensor& r_out);

/// Relevance through a pooling operation applied to `in`: max pooling hands each output's
/// relevance to the input that won its window (the first in row-major order on ties); average
/// and global average pooling are linear with positive weights and follow the z+ rule with
/// max(0, f) as the input values. Pooling kind None returns `r_out`.
torch::Tensor pool_relevance(const PoolSpec& pool, const torch::Tensor& in,
                             const torch::Tensor& r_out);

/// The relevance of every neuron for a batch of images.
struct Relevance {
  torch::Tensor input;                ///< the network input, N x C x H x W
  std::vector<torch::Tensor> blocks;  ///< every block's output, N x C x H x W; the last one is
                                      ///< the initial relevance, one-hot at the label
};

/// Layer-wise relevance propagation of images (input codes, QuantizedNetwork::quantize_input)
/// from the one-hot relevance at their labels back to the input, block by block: the post
/// pooling, the ReLU and the clamp (relevance passes unchanged, also where a clamp saturates),
/// then the block's operation (zplus_rule, the input rule for the network input,
/// pool_relevance, a split by channels for a concatenation, addition_relevance on the inputs
/// aligned to the addition's common format). A site read by several blocks sums the relevance
/// they hand back.
Relevance relevance(const QuantizedNetwork& q, const torch::Tensor& input_codes,
                    const torch::Tensor& labels, InputRule input_rule);

/// Eq. 3: the mean relevance of every neuron over a set D of images.
struct MeanRelevance {
  torch::Tensor input;                ///< C x H x W, float64
  std::vector<torch::Tensor> blocks;  ///< per block, C x H x W, float64
  int64_t images = 0;                 ///< |D|
};

/// Eq. 3 over `images` (uint8 pixels, N x C x H x W) and their labels, in batches.
MeanRelevance mean_relevance(const QuantizedNetwork& q, const torch::Tensor& images,
                             const torch::Tensor& labels, const RelevanceOptions& o = {});

/// Eq. 4: the relevance of each feature, ρ_k = Σ_m Σ_n r̂_k,m,n, from a C x H x W mean
/// relevance. Returns C values (float64).
torch::Tensor feature_relevance(const torch::Tensor& mean_relevance);

/// Eq. 5: the bit-flip criticality of each input feature c of a layer with weights w (K x C x U
/// x V) whose output features have relevance ρ (K values):
/// η_c = Σ_k Σ_u Σ_v |w_k,c,u,v| / (K·U·V) · ρ_k. Returns C values (float64).
/// With `groups` > 1 the layer is a grouped convolution, weights K x C/groups x U x V: feature c
/// reaches only the K/groups outputs of its group, and η_c sums over those alone, still divided
/// by K·U·V: the η of the dense convolution whose weights outside the groups are zero.
torch::Tensor feature_criticality(const torch::Tensor& weight, const torch::Tensor& rho_next,
                                  int64_t groups = 1);

/// What the estimation says about one activation site.
struct SiteCriticality {
  int block = 0;           ///< the site (= the block that writes it)
  torch::Tensor rho;       ///< eq. 4, C values
  torch::Tensor eta;       ///< eq. 5, C values; undefined when no weighted block reads the site,
                           ///< directly or through pooling and concatenation
  std::vector<int> readers;   ///< the blocks that read the site
  std::vector<int> weighted;  ///< the weighted blocks whose eq. 5 terms sum into eta
};

/// ρ and η of every site. η sums eq. 5 over the weighted blocks that read the site: each
/// receives the faulty value. A pooling or concatenation block that reads it passes feature c
/// on unchanged as one of its own features, whose η it takes; so does an addition (feature c of
/// each input is feature c of the sum), which has no weights of its own: the faulty value
/// reaches the addition's readers. A fully-connected reader's weights are seen as K x C x H x W
/// (U x V = the site's H x W); a grouped convolution's eq. 5 term uses its groups.
std::vector<SiteCriticality> site_criticality(const QuantizedNetwork& q, const MeanRelevance& r);

/// A feature map of a site and its eq. 5 criticality.
struct CriticalFeature {
  int site = 0;
  int64_t channel = 0;
  double eta = 0;
};

/// The `k` feature maps with the highest η over all sites (ties: the earlier site, then the
/// lower channel), highest first: what the paper's ILSVRC campaign limits itself to (V-E2,
/// "the four most critical feature maps according to (5)"). Sites without η are skipped.
std::vector<CriticalFeature> most_critical_features(const std::vector<SiteCriticality>& sites,
                                                    int64_t k);

/// The standard deviation (population, 1/C) of η / mean(η): the spread that Fig. 5b averages
/// over the layers. NaN when mean(η) is zero.
double normalized_sd(const torch::Tensor& eta);

/// Fig. 5b: (1/L) Σ_l SD(η^(l) / mean(η^(l))) over the L sites whose η is defined and whose
/// normalized_sd is (mean η not zero); `etas` may hold undefined tensors (sites without η). NaN
/// when there is no such site.
double mean_normalized_sd(const std::vector<torch::Tensor>& etas);

// ---------------------------------------------------------------------------------------------
// Validation against an exhaustive fault-injection campaign.
// ---------------------------------------------------------------------------------------------

/// Ranks 1..n of `x` in ascending order; tied values share the average of their ranks.
std::vector<double> average_ranks(const std::vector<double>& x);

/// Spearman's rank correlation: Pearson's correlation of the average ranks. NaN when either
/// side is constant (or the lengths differ in a way that leaves fewer than two pairs).
double spearman(const std::vector<double>& x, const std::vector<double>& y);

/// The indices of the k largest values, largest first; ties go to the lower index.
std::vector<int64_t> top_k(const std::vector<double>& x, int64_t k);

/// How many of the k top features of `a` (top_k) are among the k top features of `b`. Where
/// values of `b` tie across the k-th place (measured failure rates often do, at zero), the top k
/// of `b` is ambiguous: the result is the expected overlap over the ways to break those ties, so
/// it may be fractional. With all of `b` equal it is k²/C, the overlap of a random ranking.
double top_k_overlap(const std::vector<double>& a, const std::vector<double>& b, int64_t k);

/// Per feature, the mean and the largest failure rate over its neurons.
struct FeatureRates {
  std::vector<double> mean, max;
};
/// From the C x H x W failure rates of one site.
FeatureRates feature_rates(const torch::Tensor& rates);

/// How well η (and ρ) rank the measured failure rates of one site's features.
struct SiteValidation {
  double spearman_mean = 0;      ///< Spearman(η_c, mean failure rate of feature c)
  double spearman_max = 0;       ///< Spearman(η_c, largest failure rate of feature c)
  double spearman_rho_mean = 0;  ///< Spearman(ρ_c, mean failure rate): eq. 4 alone
  int64_t k = 0;                 ///< top-k size (at most C)
  double overlap_mean = 0;       ///< top-k features by η among the top-k by mean rate
  double overlap_max = 0;        ///< ... among the top-k by largest rate (top_k_overlap)
  /// The measured counterpart of SD(η/mean(η)): the SD of the features' mean (largest) failure
  /// rates over their mean (normalized_sd); how evenly the site's resilience is spread over its
  /// features, the aim of feature optimization (section IV). NaN when every rate is 0.
  double sd_mean_rate = 0, sd_max_rate = 0;
  FeatureRates rates;
};

/// Compares a site's η and ρ with its measured C x H x W failure rates.
SiteValidation validate_site(const torch::Tensor& eta, const torch::Tensor& rho,
                             const torch::Tensor& rates, int64_t k);

/// What feature optimization (Algorithm 1) did to one site's measured failure rates: the same
/// site of a model before and after, each with an exhaustive campaign, and η of the model before
/// (what eq. 6 acted on in its first adjustment).
struct FeatureChange {
  double sd_eta = 0;            ///< SD(η/mean(η)) before (normalized_sd)
  double spearman_eta_max = 0;  ///< Spearman(η, largest rate of a feature) before
  /// The spread SD(rate/mean) of the features' largest failure rates, before and after.
  double sd_max_rate_before = 0, sd_max_rate_after = 0;
  double worst_before = 0, worst_after = 0;  ///< the largest rate of any neuron
  double mean_before = 0, mean_after = 0;    ///< the mean rate over the site's neurons
  /// Spearman(η_c before, mean rate of feature c after / before) over the features whose mean
  /// rate before is not zero. Eq. 6 scales feature c's outbound weights by mean(η)/η_c, so a
  /// value near -1 says that each feature's harm moved the way its factor pushed it. NaN with
  /// fewer than two such features or a constant side.
  double spearman_factor_change = 0;
  int64_t features = 0;        ///< C
  int64_t compared = 0;        ///< features in spearman_factor_change
  int64_t features_worse = 0;  ///< features whose largest rate rose
};

/// Compares the per-feature rates of one site before and after (feature_rates of each), with η of
/// the model before. Throws Error when the three disagree in their number of features.
FeatureChange feature_change(const std::vector<double>& eta_before, const FeatureRates& before,
                             const FeatureRates& after);

// ---------------------------------------------------------------------------------------------
// The analysis of a model: what it computes and the files that hold it.
// ---------------------------------------------------------------------------------------------

/// The file-name stem of a site: "site3" (the block index), as in the campaigns' rates files.
std::string site_label(int block);

/// What an analysis takes, with its defaults.
struct AnalysisOptions {
  std::string model;                   ///< the quantized model file
  std::string data;                    ///< data set NAME[:PATH]: its training images are D
  std::string out;                     ///< results directory (made when missing)
  int64_t images = 1000;               ///< |D|: the first N training images (positive)
  RelevanceOptions relevance;          ///< input rule and batch (positive)
  /// Exhaustive campaigns of the model to validate η with (read_campaign_rates): several for a
  /// campaign split by sites. Empty: no validation.
  std::vector<std::string> campaigns;
  /// The results directory of an analysis with campaigns of the model before feature
  /// optimization (read_baseline): per site, how the measured rates changed and how the change
  /// follows eq. 6. Needs `campaigns`. Empty: none.
  std::string baseline;
  int64_t top_k = 10;                  ///< features compared by top-k overlap (positive)
  std::string command;                 ///< the command recorded in criticality.json
  std::function<void(const std::string&)> log;  ///< progress and warnings (none when empty)
};

/// One site of a baseline: η and the measured rates of the model before.
struct BaselineSite {
  std::vector<double> eta;
  FeatureRates rates;
};

/// An earlier analysis with campaigns, of the model before feature optimization.
struct Baseline {
  std::string dir, model;
  std::map<int, BaselineSite> sites;  ///< the sites with campaign rates, by block
};

/// Reads DIR/criticality.json, written by analyze with campaigns on a model of `net`'s
/// architecture. Throws Error naming the file when it is missing, not an analysis, of another
/// architecture or without a site with campaign rates.
Baseline read_baseline(const std::string& dir, const Network& net);

/// What an analysis computed.
struct Analysis {
  Network net;                           ///< the analyzed model's network
  std::string data;                      ///< the data set's name
  InputRule rule = InputRule::Auto;      ///< as resolved for the model
  MeanRelevance relevance;
  std::vector<SiteCriticality> sites;
  std::map<int, SiteValidation> checks;  ///< by site, with campaigns
  std::vector<int> unvalidated;          ///< sites with rates but no η
  Baseline baseline;                     ///< with a baseline
  std::map<int, FeatureChange> changes;  ///< by site, with a baseline
  double seconds = 0;                    ///< wall time of the analysis
  /// Fig. 5b's value of the network: mean_normalized_sd of the sites' η.
  double mean_sd() const;
};

/// Section III on a quantized model, and its validation: mean relevance over the first `images`
/// training images (eq. 3), ρ and η of every site (eq. 4, 5), each site with campaign rates
/// compared with them (validate_site), and with a baseline the change of every site in both
/// (feature_change). Writes into `out`, each file atomically: relevance_input.npy and
/// relevance_siteK.npy (eq. 3), criticality.csv, criticality.svg (Fig. 5b's view), validation.svg
/// with campaigns, and criticality.json last (the keys of docs/relevance.md). Checks the options,
/// the model, the campaigns and the baseline before the long part; throws Error naming the
/// parameter, the value and the rule.
Analysis analyze(const AnalysisOptions& o);

}  // namespace flipguard
