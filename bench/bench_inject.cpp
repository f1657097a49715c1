// Fault-image evaluations per second: the reference and the incremental engine on the same
// random faults, and the cone engine on the whole exhaustive campaign of the same site (it works
// image by image on a batch of faults, so a handful of faults would measure only its golden
// preparation); the ratios to the reference, measured in one run, and the peak memory of the
// process. Reference models (models/): mnist-cnn-opt on the correct ones of the first 1000 MNIST
// test images, cifar-cnn-opt on those of the first 200 CIFAR-10 test images; single MSB flips of
// random neurons of each site, the same for every engine. And cifar-resnet20 (models/), site by
// site, cone against reference on one core each.
#include <flipguard/allocator.hpp>
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace flipguard;

namespace {

/// A reference model and the golden run of its first test images.
struct Case {
  const char* model;
  const char* data;
  int64_t images;
};
const Case kCases[] = {{"tests/data/mnist-e6/mnist-cnn-opt-mnist-q8.fgm", "mnist", 1000},
                       {"models/cifar-cnn-opt-cifar10-q8.fgm", "cifar10", 200}};
constexpr int kNumCases = sizeof(kCases) / sizeof(kCases[0]);

struct Fixture {
  Model model;
  std::unique_ptr<QuantizedNetwork> q;
  std::unique_ptr<GoldenRun> golden;
  explicit Fixture(const Case& c)
      : model(load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/" + c.model)) {
    const Dataset test = load_dataset(parse_data_spec(c.data), Split::Test).head(c.images);
    q = std::make_unique<QuantizedNetwork>(model.net, *model.quant);
    golden = std::make_unique<GoldenRun>(*q, test.images, test.labels);
  }
};

/// The fixture of case `c`, built on first use and kept (one at a time: the golden runs are big).
Fixture& fixture(int c) {
  static const bool allocator = keep_freed_memory();  // as flipguard's main does
  if (!allocator) throw std::runtime_error("mallopt refused the allocator settings of flipguard's main");
  static std::unique_ptr<Fixture> f;
  static int current = -1;
  if (current != c) {
    f.reset();
    f = std::make_unique<Fixture>(kCases[c]);
    current = c;
  }
  return *f;
}

int cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

/// Peak resident memory of this process (VmHWM), MiB.
double peak_mib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

/// Reference rate per case and site, measured by `engines`, for the ratios of `cone_site`.
double reference_rate[kNumCases][8];

/// `n` MSB faults of random neurons of one site, drawn with a fixed seed (the same every run).
std::vector<std::vector<Fault>> random_msb_faults(const QuantizedNetwork& q, int site, int n) {
  CampaignOptions o;
  o.sites = {site};
  const CampaignPlan plan(q, o);
  Rng rng(7);
  std::vector<std::vector<Fault>> sets;
  for (int k = 0; k < n; ++k) sets.push_back(plan.faults(static_cast<int64_t>(rng.below(plan.size()))));
  return sets;
}

/// The same random MSB faults of one site through the reference and the incremental engine, one
/// fault set at a time on all cores, the fastest of three passes each (and through the cone
/// engine, as a check of its counts).
void engines(benchmark::State& state) {
  torch::set_num_threads(cores());
  const int c = static_cast<int>(state.range(0)), site = static_cast<int>(state.range(1));
  Fixture& f = fixture(c);
  const auto sets = random_msb_faults(*f.q, site, 12);
  const double evals = static_cast<double>(sets.size()) * f.golden->correct();
  ReferenceEngine ref(*f.q, *f.golden, FaultTarget::Activations);
  IncrementalEngine inc(*f.q, *f.golden, FaultTarget::Activations);
  ConeEngine cone(*f.q, *f.golden, FaultTarget::Activations);
  // The fastest of three passes per engine: here the reference engine's time of a pass is
  // bimodal (some passes take up to 5x longer than the others, with much system time), and a
  // slow reference would overstate every ratio.
  constexpr int kPasses = 3;
  double t_ref = 0, t_inc = 0;
  for (auto _ : state) {
    std::vector<int64_t> want, got(sets.size(), 0);
    double best_ref = 1e300, best_inc = 1e300;
    for (int pass = 0; pass < kPasses; ++pass) {
      std::vector<int64_t> counts;
      auto t0 = std::chrono::steady_clock::now();
      for (const auto& s : sets) counts.push_back(ref.failures(s));
      best_ref = std::min(best_ref, seconds_since(t0));
      if (pass > 0 && counts != want) state.SkipWithError("reference passes differ");
      want = counts;
      t0 = std::chrono::steady_clock::now();
      for (size_t k = 0; k < sets.size(); ++k)
        if (inc.failures(sets[k]) != want[k]) state.SkipWithError("incremental != reference");
      best_inc = std::min(best_inc, seconds_since(t0));
    }
    t_ref += best_ref;
    t_inc += best_inc;
    cone.failures_over(sets, 0, f.golden->correct(), cores(), got);
    if (got != want) state.SkipWithError("cone != reference");
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["reference/s"] = evals * n / t_ref;
  state.counters["incremental/s"] = evals * n / t_inc;
  state.counters["inc:ref"] = t_ref / t_inc;
  state.counters["peak_MiB"] = peak_mib();
  reference_rate[c][site] = evals * n / t_ref;
}

/// The cone engine on the exhaustive MSB campaign of one whole site (every neuron), as
/// `flipguard inject` runs it: evaluations per second, pruned pairs, peak memory.
void cone_site(benchmark::State& state) {
  torch::set_num_threads(cores());
  const int c = static_cast<int>(state.range(0)), site = static_cast<int>(state.range(1));
  Fixture& f = fixture(c);
  CampaignOptions o;
  o.sites = {site};
  const CampaignPlan plan(*f.q, o);
  ConeEngine cone(*f.q, *f.golden, FaultTarget::Activations);
  RunOptions r;
  r.workers = cores();
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(run_campaign(plan, cone, f.golden->correct(), r));
    seconds += seconds_since(t0);
  }
  const ConeStats st = cone.stats();
  const double rate = static_cast<double>(st.pairs) / seconds;
  state.counters["cone/s"] = rate;
  const double ref = reference_rate[c][site];
  if (ref > 0) state.counters["cone:ref"] = rate / ref;
  state.counters["pruned%"] = 100.0 * st.pruned / std::max<int64_t>(1, st.pairs);
  state.counters["peak_MiB"] = peak_mib();
}

/// cifar-resnet20: the trained 8-bit reference model of models/ on the first 50 CIFAR-10 test
/// images (its correct ones). Without that file (a checkout before it was trained), random
/// weights (seed 5) quantized on those images, each labelled with its own golden answer (so
/// every image counts); the label of the benchmark says which.
struct Resnet20 {
  Network net;
  std::unique_ptr<QuantizedNetwork> q;
  std::unique_ptr<GoldenRun> golden;
  bool trained = false;
  Resnet20() {
    const Case c{"models/cifar-resnet20-cifar10-q8.fgm", "cifar10", 50};
    if (std::ifstream(std::string(FLIPGUARD_SOURCE_DIR) + "/" + c.model).good()) {
      Fixture f(c);
      net = f.model.net;
      q = std::move(f.q);
      golden = std::move(f.golden);
      trained = true;
      return;
    }
    const Dataset test = load_dataset(parse_data_spec(c.data), Split::Test).head(c.images);
    net = build_zoo("cifar-resnet20", 5);
    QuantOptions o;
    o.refine = false;
    q = std::make_unique<QuantizedNetwork>(net, calibrate(net, test.images, o));
    golden = std::make_unique<GoldenRun>(*q, test.images, q->scores(test.images).argmax(1));
  }
};

/// Per site of cifar-resnet20: ten random MSB faults through the cone and the reference engine,
/// one core each (one cone worker, one LibTorch thread); milliseconds per fault over the 50
/// images and their ratio, for an estimate of the exhaustive MSB campaign (faults x time).
void resnet20_site(benchmark::State& state) {
  torch::set_num_threads(1);
  static const Resnet20 r;
  const int site = r.net.sites().at(static_cast<size_t>(state.range(0)));
  const auto sets = random_msb_faults(*r.q, site, 10);
  ReferenceEngine ref(*r.q, *r.golden, FaultTarget::Activations);
  ConeEngine cone(*r.q, *r.golden, FaultTarget::Activations);
  double t_ref = 0, t_cone = 0;
  for (auto _ : state) {
    std::vector<int64_t> want, got(sets.size(), 0);
    auto t0 = std::chrono::steady_clock::now();
    for (const auto& s : sets) want.push_back(ref.failures(s));
    t_ref += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    cone.failures_over(sets, 0, r.golden->correct(), 1, got);
    t_cone += seconds_since(t0);
    if (got != want) state.SkipWithError("cone != reference");
  }
  const double faults = static_cast<double>(sets.size() * state.iterations());
  state.SetLabel(r.net.blocks[site].name + (r.trained ? "" : " (random weights)"));
  state.counters["peak_MiB"] = peak_mib();
  state.counters["neurons"] = static_cast<double>(r.net.shapes()[site].numel());
  state.counters["cone_ms"] = 1e3 * t_cone / faults;
  state.counters["reference_ms"] = 1e3 * t_ref / faults;
  state.counters["cone:ref"] = t_ref / t_cone;
}

}  // namespace

/// Case 0 (MNIST): sites 0-2; case 1 (CIFAR-10): sites 0-5. Each case's engines run before its
/// cone campaigns, so that the ratios have their reference.
void sites(benchmark::internal::Benchmark* b, int c, int n) {
  for (int s = 0; s < n; ++s) b->Args({c, s});
}
BENCHMARK(engines)->ArgNames({"case", "site"})->Apply([](auto* b) { sites(b, 0, 3); })
    ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK(cone_site)->ArgNames({"case", "site"})->Apply([](auto* b) { sites(b, 0, 3); })
    ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK(engines)->ArgNames({"case", "site"})->Apply([](auto* b) { sites(b, 1, 6); })
    ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
BENCHMARK(cone_site)->ArgNames({"case", "site"})->Apply([](auto* b) { sites(b, 1, 6); })
    ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);

BENCHMARK(resnet20_site)->ArgName("site")->DenseRange(0, 30)->Unit(benchmark::kSecond)
    ->UseRealTime()->Iterations(1);

BENCHMARK_MAIN();
