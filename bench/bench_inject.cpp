// Fault-image evaluations per second of the reference and the incremental engine: single MSB
// flips of random neurons in each site of the reference model mnist-cnn-opt (models/), over
// the correct ones of the first 1000 MNIST test images. Both engines see the same faults.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/model_file.hpp>

#include <benchmark/benchmark.h>

#include <memory>
#include <thread>

using namespace flipguard;

namespace {

struct Fixture {
  Model model;
  std::unique_ptr<QuantizedNetwork> q;
  std::unique_ptr<GoldenRun> golden;
  Fixture() : model(load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/models/mnist-cnn-opt-mnist-q8.fgm")) {
    const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(1000);
    q = std::make_unique<QuantizedNetwork>(model.net, *model.quant);
    golden = std::make_unique<GoldenRun>(*q, test.images, test.labels);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void msb(benchmark::State& state, const std::string& engine_name) {
  torch::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  Fixture& f = fixture();
  const int site = static_cast<int>(state.range(0));
  CampaignOptions o;
  o.sites = {site};
  const CampaignPlan plan(*f.q, o);
  auto engine = make_engine(engine_name, *f.q, *f.golden, FaultTarget::Activations);
  Rng rng(7);
  int64_t failures = 0;
  for (auto _ : state)
    failures += engine->failures(plan.faults(static_cast<int64_t>(rng.below(plan.size()))));
  benchmark::DoNotOptimize(failures);
  state.counters["evaluations/s"] = benchmark::Counter(
      double(f.golden->correct()) * state.iterations(), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(msb, reference, std::string("reference"))->ArgName("site")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK_CAPTURE(msb, incremental, std::string("incremental"))->ArgName("site")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

BENCHMARK_MAIN();
