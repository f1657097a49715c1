// The augmentation presets of training and fine-tuning, by name.
#include <flipguard/error.hpp>
#include <flipguard/train.hpp>

namespace flipguard {

namespace {

/// One preset: the augmentation it sets. `auto` is resolved by the data set first.
struct AugmentMode {
  const char* name;
  bool augment;
  int pad;
  bool flip;
  double degrees, scale;
};

const std::vector<AugmentMode>& augment_table() {
  const TrainOptions d;
  static const std::vector<AugmentMode> table{
      {"on", true, d.augment_pad, d.augment_flip, 0, 0},
      {"shift", true, 2, false, 0, 0},
      {"affine", true, 2, false, 10, 0.1},
      {"off", false, d.augment_pad, d.augment_flip, 0, 0}};
  return table;
}

}  // namespace

const std::vector<std::string>& augment_modes() {
  static const std::vector<std::string> modes = [] {
    std::vector<std::string> m{"auto"};
    for (const auto& t : augment_table()) m.push_back(t.name);
    return m;
  }();
  return modes;
}

void set_augment(const std::string& mode, const std::string& data_name, TrainOptions& o) {
  const std::string name = mode != "auto" ? mode : data_name == "cifar10" ? "on" : "off";
  for (const auto& t : augment_table())
    if (name == t.name) {
      o.augment = t.augment;
      o.augment_pad = t.pad;
      o.augment_flip = t.flip;
      o.augment_degrees = t.degrees;
      o.augment_scale = t.scale;
      return;
    }
  fail("augment mode '", mode, "': expected one of ", join(augment_modes()));
}

}  // namespace flipguard
