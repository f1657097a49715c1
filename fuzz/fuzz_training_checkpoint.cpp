// Fuzz target: training checkpoints (train's --checkpoint, read by --resume and --init): a
// LibTorch archive with the weights, the optimizer's state, the epochs done and the run's
// options. The first byte chooses resume (bit 0 clear) or a warm restart (init); the rest is
// the file. The run is fuzz::tiny_training() (one epoch of two 8x8 images), which the seeds
// (make_corpus.cpp) checkpointed.
#include <flipguard/train.hpp>

#include "fuzz.hpp"
#include "tiny_network.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flipguard;
  fuzz::Parts parts(data, size);
  const bool init = parts.byte() & 1;
  const std::string path = fuzz::write_input("train.ckpt", parts.rest());
  static const Dataset set = fuzz::tiny_training_set();
  TrainOptions o = fuzz::tiny_training(init ? "" : path);
  if (init) o.init = path;
  o.resume = !init;
  fuzz::expect_clean([&] {
    Network net = fuzz::tiny_network();
    train_network(net, set, Dataset{}, o, [](const std::string&) {});
  });
  return 0;
}
