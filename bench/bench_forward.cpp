// Images per second of the float forward pass and of the integer-exact fixed-point forward pass,
// measured on the same random images, and their ratio (the cost of exact emulation).
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include <benchmark/benchmark.h>

#include <thread>

using namespace flipguard;

namespace {

struct Fixture {
  Network net;
  QuantizedNetwork qnet;
  torch::Tensor images;
  explicit Fixture(const std::string& arch)
      : net(build_zoo(arch, 1)), qnet(net, calibrate(net, random_images(net, 64), {})),
        images(random_images(net, 256)) {}
  static torch::Tensor random_images(const Network& n, int64_t count) {
    torch::Generator gen = at::detail::createCPUGenerator(42);
    return torch::randint(0, 256, {count, n.input.c, n.input.h, n.input.w}, gen, torch::kLong)
        .to(torch::kUInt8);
  }
};

Fixture& fixture(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<Fixture>> cache;
  auto& f = cache[arch];
  if (!f) f = std::make_unique<Fixture>(arch);
  return *f;
}

void float_forward(benchmark::State& state, const std::string& arch) {
  torch::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  Fixture& f = fixture(arch);
  torch::NoGradGuard g;
  for (auto _ : state) benchmark::DoNotOptimize(f.net.forward(f.net.preprocess(f.images)));
  state.counters["images/s"] =
      benchmark::Counter(double(f.images.size(0)) * state.iterations(), benchmark::Counter::kIsRate);
}

void fixed_point_forward(benchmark::State& state, const std::string& arch) {
  torch::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  Fixture& f = fixture(arch);
  for (auto _ : state) benchmark::DoNotOptimize(f.qnet.scores(f.images));
  state.counters["images/s"] =
      benchmark::Counter(double(f.images.size(0)) * state.iterations(), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(float_forward, mnist_cnn_opt, std::string("mnist-cnn-opt"))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fixed_point_forward, mnist_cnn_opt, std::string("mnist-cnn-opt"))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(float_forward, cifar_cnn_opt, std::string("cifar-cnn-opt"))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(fixed_point_forward, cifar_cnn_opt, std::string("cifar-cnn-opt"))->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
