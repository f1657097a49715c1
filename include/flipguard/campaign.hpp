#pragma once
/// \file
/// Fault-injection campaigns (sections V-C, V-D): exhaustive, sampled (Leveugle et al., DATE
/// 2009) and bit error rate. A campaign is a list of fault sets, each evaluated by an engine
/// against the golden run; its result is a failure count per fault set. Fault sets are drawn
/// from the seed and their index alone, so the result does not depend on the order or the
/// process that evaluates them, and a resumed campaign equals an uninterrupted one.
#include <flipguard/fault.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace flipguard {

/// Which bits an exhaustive campaign flips.
enum class BitChoice {
  Msb,  ///< the most significant bit (the sign bit of a signed format), the paper's fault
  One,  ///< one given bit position (CampaignOptions::bit)
  All,  ///< every bit position, one at a time
};

/// Options of a campaign, with their defaults.
struct CampaignOptions {
  std::string campaign = "exhaustive";  ///< see campaign_names()
  FaultTarget target = FaultTarget::Activations;
  /// Sites (activations: indices as `flipguard zoo` lists them) or weighted blocks (weights:
  /// block indices) to fault; empty: all of them.
  std::vector<int> sites;
  /// Exhaustive only: evaluate just these elements (neurons or weights, numbered over the fault
  /// space, strictly increasing), e.g. positions in the most critical feature maps
  /// (`inject --top-features`); empty: every element.
  std::vector<int64_t> elements;
  BitChoice bits = BitChoice::Msb;  ///< exhaustive only
  int bit = 7;                      ///< with BitChoice::One
  double error = 0.01;              ///< sampled: margin of error e
  double confidence = 0.95;         ///< sampled and ber: confidence level of the intervals
  double p = 0.5;                   ///< sampled: assumed proportion (0.5 is the worst case)
  std::vector<double> ber{1e-6, 1e-5, 1e-4, 1e-3, 1e-2};  ///< ber: bit error rates
  int64_t runs = 100;               ///< ber: runs per rate (the paper uses 1000)
  uint64_t seed = 1;                ///< sampled and ber draws
  /// list: the faults to evaluate, one fault set each, in this order (read_fault_list); the
  /// sites are those they name (`sites` must be empty).
  std::vector<Fault> faults;
};

/// Names of the campaigns, for --campaign: exhaustive, sampled, ber; and list (the faults of
/// CampaignOptions::faults, given rather than drawn).
const std::vector<std::string>& campaign_names();

/// A list of faults to replay (`inject --faults`): a CSV file whose header names the columns
/// `block` (or `site`), `index` and `bit` (others, such as samples.csv's `name` and
/// `failure_rate`, are ignored: a campaign's samples.csv or faults.csv reads back as is), or a
/// .npy array of integers (int64 or int32) of shape (n, 3) holding block, index, bit per row.
/// Throws Error naming the file, the row and the value for anything else; the faults are checked
/// against a network by CampaignPlan.
std::vector<Fault> read_fault_list(const std::string& path);

/// Sets `o.bits` (and `o.bit`) from the bit choice's name: "msb", "all", or a bit position
/// ("0" is the LSB). Throws Error for anything else.
void parse_bit(const std::string& choice, CampaignOptions& o);

/// One feature map chosen by select_critical_neurons.
struct CriticalNeuronsFeature {
  int site = 0;           ///< block index of the site
  int64_t channel = 0;    ///< feature map (channel) in the site
  double eta = 0;         ///< its criticality η (eq. 5)
  int64_t positions = 0;  ///< neurons drawn in it
};

/// The neurons of a limited exhaustive campaign: CampaignOptions::sites and ::elements.
struct CriticalNeurons {
  std::vector<int> sites;                        ///< the sites of the features, increasing
  std::vector<int64_t> elements;                 ///< neurons over the fault space of `sites`
  std::vector<CriticalNeuronsFeature> features;  ///< highest η first
};

/// Sub-stream of the campaign seed that draws the positions in the i-th most critical feature
/// map: derive_seed(seed, kCriticalPositionsStream + i). The exhaustive campaign these neurons
/// limit draws nothing else; the offset (a prime above a million) keeps the streams apart from
/// those of the first million fault sets, derive_seed(seed, index), of a sampled or bit error
/// rate campaign with the same seed.
constexpr uint64_t kCriticalPositionsStream = 1000003;

/// The paper's ILSVRC campaign (V-E2): the `top_features` feature maps with the highest η (eq. 5,
/// the relevance of eq. 3 on `images` and `labels`) over all activation sites, and `positions`
/// neurons drawn in each (distinct, uniformly, seeded by `seed` through
/// kCriticalPositionsStream; all neurons of a smaller map). Throws Error unless both counts are
/// at least 1.
CriticalNeurons select_critical_neurons(const QuantizedNetwork& q, const torch::Tensor& images,
                                        const torch::Tensor& labels, int64_t top_features,
                                        int64_t positions, uint64_t seed);

/// The record of a selection in a campaign's summary.json ("selection"): the two counts, the
/// training images its relevance came from, and per feature map its site, the site's block name,
/// channel, η and positions.
nlohmann::json selection_json(const CriticalNeurons& c, const Network& net, int64_t top_features,
                              int64_t positions, int64_t relevance_images);

/// The memory a campaign faults: the chosen sites (or weight tensors), each with its number of
/// elements and its word length. Positions are numbered over all of them: element-major, bit
/// minor: position = (offset of the tensor + element) * bits + bit.
struct FaultSpace {
  struct Tensor {
    int block = 0;
    std::string name;
    std::vector<int64_t> shape;  ///< C, H, W of a site; the weight tensor's shape
    int64_t size = 0;            ///< elements
    int bits = 8;
    int64_t offset = 0;          ///< elements before it
    int64_t first_position = 0;  ///< positions (bits) before it
  };
  FaultTarget target = FaultTarget::Activations;
  std::vector<Tensor> tensors;
  int64_t elements() const;   ///< neurons (or weights) in all chosen tensors
  int64_t positions() const;  ///< bits in all chosen tensors
  /// The fault at a bit position.
  Fault at(int64_t position) const;
  /// The fault at element `element` (numbered over all tensors) and bit `bit`; bit -1: the MSB.
  Fault element(int64_t element, int bit) const;
  /// Index into `tensors` of a block.
  size_t tensor_of(int block) const;
};

/// The fault space of `sites` (empty: all) of a network. Throws Error for an index out of range,
/// listing the valid ones.
FaultSpace fault_space(const QuantizedNetwork& q, FaultTarget target, const std::vector<int>& sites);

/// Sample size after Leveugle et al. (DATE 2009), eq. (2) there:
/// n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), rounded up; N the population, e the margin,
/// t the normal quantile of the confidence level, p the assumed proportion.
int64_t leveugle_sample_size(int64_t population, double error, double confidence, double p = 0.5);

/// The two-sided normal quantile of a confidence level: t with P(|Z| < t) = confidence.
double normal_quantile(double confidence);

/// A seeded 64-bit generator (SplitMix64): small, fast, and the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next();
  /// Uniform integer in [0, n), without modulo bias.
  uint64_t below(uint64_t n);
  /// Uniform real in (0, 1).
  double uniform();
 private:
  uint64_t s_;
};

/// A seed for sub-stream `index` of `seed` (for fault set `index` of a campaign).
uint64_t derive_seed(uint64_t seed, uint64_t index);

/// Binomial(n, p) draw: the number of successes among n independent trials of probability p,
/// by counting geometric gaps (O(n p) draws; exact).
int64_t draw_binomial(int64_t n, double p, Rng& rng);

/// k distinct positions drawn uniformly from [0, n) (Floyd's algorithm), sorted.
std::vector<int64_t> draw_distinct(int64_t n, int64_t k, Rng& rng);

/// The fault sets of a campaign: how many, and the i-th one.
class CampaignPlan {
 public:
  CampaignPlan(const QuantizedNetwork& q, const CampaignOptions& o);
  const CampaignOptions& options() const { return o_; }
  const FaultSpace& space() const { return space_; }
  int64_t size() const { return size_; }
  std::vector<Fault> faults(int64_t i) const;
  /// Sampled: the population size and the sampled positions (sorted).
  const std::vector<int64_t>& samples() const { return samples_; }
  /// Exhaustive: bits flipped per element (1, or the word length with BitChoice::All).
  int bits_per_element() const;

 private:
  CampaignOptions o_;
  FaultSpace space_;
  int64_t size_ = 0;
  std::vector<int64_t> samples_;
};

/// Progress of a running campaign.
struct CampaignProgress {
  int64_t done = 0, total = 0;
  double seconds = 0;          ///< since this process started on it
  double evaluations_per_second = 0;  ///< fault set x image evaluations
  double seconds_left = 0;
};

/// How a campaign runs: where it checkpoints, and whom it tells about progress.
struct RunOptions {
  std::string checkpoint;          ///< file to checkpoint to; empty: no checkpoints
  double checkpoint_seconds = 60;  ///< at most this long between checkpoints
  bool resume = false;             ///< continue from the checkpoint when it exists
  /// Checkpoint a campaign that completes, too (run_image_campaign: a finished chunk's counts
  /// survive a stop in a later chunk).
  bool checkpoint_at_end = false;
  /// Stop (with a checkpoint, as a kill between checkpoints would lose less) after this many
  /// fault sets evaluated by this process; 0: run to the end. For tests of --resume.
  int64_t stop_after = 0;
  /// Asked between steps (a fault set, or a group of them over a chunk of images: about a second
  /// of work), from any worker thread; true stops the run as stop_after does: a checkpoint, and
  /// -1 for the fault sets not finished. The program stops this way on SIGINT and SIGTERM.
  std::function<bool()> stop;
  /// Fault sets evaluated at once (image-major engines: threads over images), each by its own thread with single-threaded tensor
  /// operations; 1: one at a time, with the tensor operations on all threads. The engine must
  /// allow concurrent calls (both engines do).
  int workers = 1;
  /// Engines that evaluate image by image (Engine::image_major): images per chunk. Each chunk
  /// runs in steps of some of the pending fault sets, sized to take about a second; progress,
  /// checkpoints (with the partial counts) and stops come between steps.
  int64_t image_chunk = 128;
  std::function<void(const CampaignProgress&)> progress;  ///< called every two seconds
  /// Identity of the campaign (model, data, options) stored in the checkpoint; a resume checks it.
  nlohmann::json fingerprint;
  /// Distributed runs: this process evaluates only the fault sets i with i % ranks == rank and
  /// leaves the others at -1, so the element-wise maximum of the processes' counts (dist_max in
  /// distributed.hpp) is the whole result.
  int rank = 0, ranks = 1;
};

/// The checkpoint file of a campaign in results folder `dir`: checkpoint.json, or under mpirun
/// (ranks > 1) each process's own, checkpoint.rankRofN.json.
std::string campaign_checkpoint_path(const std::string& dir, int rank = 0, int ranks = 1);

/// The failure count of every fault set of a plan; -1 where not evaluated (a stopped run).
struct CampaignCounts {
  std::vector<int64_t> failures;
  double seconds = 0;  ///< wall time spent on it, by this and earlier (resumed) processes
  bool complete() const;
};

/// Runs (or continues) a campaign, or this rank's share of it (RunOptions::rank). Throws Error
/// when a checkpoint to resume belongs to another campaign.
CampaignCounts run_campaign(const CampaignPlan& plan, Engine& engine, int64_t images,
                            const RunOptions& r);

/// How run_image_campaign runs a campaign on an image set.
struct ImageCampaignOptions {
  std::string engine = "cone";  ///< one of engine_names()
  EngineOptions engine_options;
  /// Checkpoints, resume, workers, ranks and progress as for run_campaign. With several chunks
  /// each has its own checkpoint (chunk_checkpoint_path) and progress counts fault sets' worth
  /// of work over all chunks (a chunk is 1/chunks of every set; seconds_left -1: not estimated).
  RunOptions run;
  /// The most bytes the golden run's stored codes may take (GoldenRun::bytes_per_image per
  /// image): a larger image set is split into even chunks of consecutive images, each with its
  /// own golden run and engine, and the failure counts of the chunks add up exactly. 0: one
  /// golden run over all images.
  int64_t golden_bytes = int64_t{2} << 30;
  ProgressFn progress;  ///< the golden runs: phase "golden run" (or "golden run K/N")
  /// Called after each chunk's campaign with its engine (to gather its statistics).
  std::function<void(const Engine&)> on_engine;
};

/// What run_image_campaign did.
struct ImageCampaign {
  CampaignCounts counts;  ///< over all images; incomplete when a chunk stopped (stop_after)
  GoldenTotals golden;    ///< summed over the chunks
  int64_t chunks = 1;     ///< golden runs
  int64_t chunk_images = 0;  ///< images in each (the last may have fewer)
  /// Checkpoint files of the run (one per chunk): remove them once the results are written.
  std::vector<std::string> checkpoints;
};

/// How run_image_campaign splits `images` images for a golden-run limit of `golden_bytes`:
/// {chunks, images per chunk}.
std::pair<int64_t, int64_t> golden_chunks(const QuantizedNetwork& q, int64_t images,
                                          int64_t golden_bytes);

/// The checkpoint of chunk `chunk` (0-based) of `chunks` beside `checkpoint`:
/// "dir/checkpoint.json" becomes "dir/checkpoint.chunk2of5.json"; one chunk keeps `checkpoint`.
std::string chunk_checkpoint_path(const std::string& checkpoint, int64_t chunk, int64_t chunks);

/// A whole campaign on `images` (uint8 N x C x H x W) with `labels`: the golden run and the
/// engine `o.engine`, then run_campaign, chunk of images by chunk when the golden run would
/// exceed `o.golden_bytes`. A chunk's checkpoint carries o.run.fingerprint plus the chunk's
/// images, so a resume with another chunking is refused; a resumed run repeats the golden runs
/// of finished chunks (their counts come from their checkpoints). Stops after the first chunk
/// that does not complete (RunOptions::stop_after).
ImageCampaign run_image_campaign(const CampaignPlan& plan, const QuantizedNetwork& q,
                                 const torch::Tensor& images, const torch::Tensor& labels,
                                 const ImageCampaignOptions& o);

/// Statistics of failure rates.
struct RateStats {
  int64_t count = 0;
  double worst = 0, mean = 0;
  double q50 = 0, q90 = 0, q99 = 0, q999 = 0;  ///< quantiles (linear interpolation)
  int64_t nonzero = 0;                          ///< rates above zero
};
RateStats rate_stats(std::vector<double> rates);

/// Mean of `values` with a normal-approximation confidence interval; `population`, when given,
/// applies the finite population correction of sampling without replacement.
struct Interval {
  double mean = 0, low = 0, high = 0, half_width = 0;
};
Interval mean_interval(const std::vector<double>& values, double confidence,
                       std::optional<int64_t> population = std::nullopt);

/// Histogram of failure rates with bins [k w, (k+1) w) up to 1 (the last bin includes 1).
std::vector<int64_t> rate_histogram(const std::vector<double>& rates, double bin_width);

/// The histogram bin width `write_campaign_results` uses when given 0: the smallest of 1, 2 or 5
/// times a power of ten that gives the worst rate at most 25 bins and is no finer than one image
/// of `images` (bins narrower than that would be empty between the possible rates).
double auto_bin_width(double worst, int64_t images);

/// The file-name stem of a fault-space tensor: "site3" or "weights3" (the block index).
std::string tensor_label(const FaultSpace& space, size_t t);

/// Writes a finished campaign's results into `dir` (which must exist): summary.json (with `meta`
/// merged in: model, data, engine, command), and per campaign kind
///  - exhaustive: rates_<label>.npy (float64; C x H x W, or C x H x W x bits with every bit) and
///    .csv per tensor, histogram.csv and histogram.svg (neurons per failure-rate bin of width
///    `bin_width`, or auto_bin_width() when it is 0, per tensor and overall; Fig. 3/4);
///  - sampled: samples.csv and samples.npy (the rate of each sampled fault);
///  - ber: ber.csv, ber_rates.npy (rates x runs) and ber.svg (Fig. 7).
/// Figures that could not be rendered are reported in `warnings`. Returns the summary.
nlohmann::json write_campaign_results(const std::string& dir, const CampaignPlan& plan,
                                      const CampaignCounts& counts, const GoldenTotals& golden,
                                      const nlohmann::json& meta, double bin_width,
                                      std::vector<std::string>& warnings);

// ---------------------------------------------------------------------------------------------
// Reading a finished campaign back: the one reader of what write_campaign_results writes.
// ---------------------------------------------------------------------------------------------

/// What read_campaign reads from the directory of an exhaustive campaign on activations.
struct CampaignResults {
  nlohmann::json summary;  ///< its summary.json; null when the directory has none
  /// The per-neuron failure rates of every site of the network that the campaign measured, by
  /// site (block): C x H x W, float64; NaN where a campaign of selected neurons injected none.
  std::map<int, torch::Tensor> rates;
};

/// The per-neuron failure rates of site `site` in the directory of an exhaustive campaign:
/// rates_siteK.npy, or rates_siteK.csv when there is no .npy. Returns a float64 tensor of `shape`;
/// throws Error when the file is missing, corrupt, or of another shape (a campaign of every bit,
/// C x H x W x bits, is refused).
torch::Tensor read_site_rates(const std::string& dir, int site, const Shape& shape);

/// Reads the exhaustive campaign of `net` in `dir`: its summary.json, when there is one (checked
/// for the same architecture, an exhaustive campaign and activation faults), and the rates of
/// every site of `net` it holds (read_site_rates). Throws Error when the directory is missing, the
/// summary differs or no site's rates are there.
CampaignResults read_campaign(const std::string& dir, const Network& net);

/// The rates of a campaign split into several runs (`sites` of CampaignOptions), one directory
/// each (read_campaign): every site from the directory that holds it. Throws Error when two
/// directories hold the same site (which one is meant is not clear) or when `dirs` is empty.
std::map<int, torch::Tensor> read_campaign_rates(const std::vector<std::string>& dirs,
                                                 const Network& net);

}  // namespace flipguard
