/// \file
/// The data set registry: names, `NAME[:PATH]` specs, default locations and load_dataset, which
/// finds the files of a split and hands them to the format loaders (idx.cpp, cifar_binary.cpp,
/// image_folder.cpp).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <optional>
#include <sstream>

#include "flipguard/data.hpp"
#include "flipguard/error.hpp"
#include "flipguard/parse.hpp"
#include "file_bytes.hpp"

namespace flipguard {

namespace {

namespace fs = std::filesystem;

/// "mnist, fashion-mnist, cifar10"
std::string joined_names() { return join(data_set_names()); }

void check_known(const std::string& name) {
  for (const std::string& known : data_set_names()) {
    if (name == known) return;
  }
  fail("unknown data set '", name, "': expected one of ", joined_names());
}

/// The value of environment variable `name`, or "" when it is unset or empty.
std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

/// What a data set's folder should contain and how to get it, for "folder not found" errors.
std::string expected_contents(const std::string& name) {
  if (name == "mnist") {
    return "the MNIST IDX files (train-images-idx3-ubyte etc., plain or .gz); `./run setup` "
           "fetches them";
  }
  if (name == "fashion-mnist") {
    return "the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz etc.); install Debian's "
           "package dataset-fashion-mnist (`./run setup` does)";
  }
  if (name == "imagenet") {
    return "ImageNet images as <wnid>/*.JPEG folders (or train/ and val/ folders of them); "
           "`./run setup` unpacks the 1,000-image sample";
  }
  return "CIFAR-10 as binary batches (data_batch_1.bin ... test_batch.bin, optionally in "
         "cifar-10-batches-bin/) or as image folders train/<class>/*.jpg and test/<class>/*.jpg; "
         "`./run setup` unpacks them";
}

/// `folder/stem`, or `folder/stem.gz` when only the compressed file exists.
std::string find_idx_file(const std::string& name, const fs::path& folder,
                          const std::string& stem) {
  for (const std::string& file : {stem, stem + ".gz"}) {
    if (fs::is_regular_file(folder / file)) return (folder / file).string();
  }
  fail("data set '", name, "': neither '", stem, "' nor '", stem, ".gz' found in folder '",
       folder.string(), "'");
}

Dataset load_idx_split(const std::string& name, const fs::path& folder, Split split) {
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string images = find_idx_file(name, folder, prefix + "-images-idx3-ubyte");
  const std::string labels = find_idx_file(name, folder, prefix + "-labels-idx1-ubyte");
  Dataset out = load_idx(images, labels);
  if (name == "fashion-mnist") {
    out.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  }
  return out;
}

/// An image folder's labels are the ranks of its class folders' names: a CIFAR-10 folder with
/// one class folder missing or one too many would shift every label after it. So its class
/// folders must be CIFAR-10's ten, which sort into CIFAR-10's label order.
void check_cifar_classes(const std::vector<std::string>& found, const fs::path& root) {
  const std::vector<std::string>& expected = data_detail::cifar10_class_names();
  if (found == expected) return;
  std::vector<std::string> missing, extra;
  for (const std::string& c : expected)
    if (std::find(found.begin(), found.end(), c) == found.end()) missing.push_back(c);
  for (const std::string& c : found)
    if (std::find(expected.begin(), expected.end(), c) == expected.end()) extra.push_back(c);
  fail("data set 'cifar10': image folder '", root.string(), "' has ", found.size(),
       " class folders, expected CIFAR-10's ten (", join(expected), ")",
       missing.empty() ? "" : "; missing: " + join(missing),
       extra.empty() ? "" : "; not CIFAR-10 classes: " + join(extra),
       " (labels are the ranks of the folder names, so every label would shift)");
}

/// CIFAR-10 from binary batches in `folder` or `folder/cifar-10-batches-bin`, or from the image
/// folders `folder/train` and `folder/test`.
Dataset load_cifar_split(const fs::path& folder, Split split) {
  for (const fs::path& dir : {folder, folder / "cifar-10-batches-bin"}) {
    if (!fs::is_regular_file(dir / "data_batch_1.bin")) continue;
    std::vector<std::string> files;
    if (split == Split::Test) {
      files.push_back((dir / "test_batch.bin").string());
    } else {
      for (int i = 1; i <= 5; ++i) {
        files.push_back((dir / ("data_batch_" + std::to_string(i) + ".bin")).string());
      }
    }
    return load_cifar_binary(files);
  }
  if (fs::is_directory(folder / "train") && fs::is_directory(folder / "test")) {
    const fs::path root = folder / (split == Split::Train ? "train" : "test");
    Dataset out = load_image_folder(root.string());
    check_cifar_classes(out.class_names, root);
    return out;
  }
  fail("data set 'cifar10': folder '", folder.string(),
       "' holds neither data_batch_1.bin (also looked in cifar-10-batches-bin/) nor train/ and "
       "test/ subfolders; expected ",
       expected_contents("cifar10"));
}

/// ImageNet: `folder/train` and `folder/val` when both exist, else `folder` itself for both
/// splits (the 1,000-image sample has no split); torchvision's resizing and centre crop.
Dataset load_imagenet_split(const DataSpec& spec, const fs::path& folder, Split split) {
  fs::path root = folder;
  if (fs::is_directory(folder / "train") && fs::is_directory(folder / "val"))
    root = folder / (split == Split::Train ? "train" : "val");
  return load_image_folder(root.string(), ImageTransform{spec.resize, spec.crop, true});
}

}  // namespace

/// $FLIPGUARD_DATA_DIR, else $XDG_CACHE_HOME/flipguard, else $HOME/.cache/flipguard (the same
/// rule as `./run setup`).
std::string data_dir() {
  if (const std::string dir = env("FLIPGUARD_DATA_DIR"); !dir.empty()) return dir;
  if (const std::string cache = env("XDG_CACHE_HOME"); !cache.empty()) return cache + "/flipguard";
  return env("HOME") + "/.cache/flipguard";
}

Dataset Dataset::head(int64_t n) const {
  if (n <= 0 || n >= size()) return *this;
  Dataset out = *this;
  out.images = images.slice(0, 0, n);
  out.labels = labels.slice(0, 0, n);
  return out;
}

const std::vector<std::string>& data_set_names() {
  static const std::vector<std::string> names = {"mnist", "fashion-mnist", "cifar10", "imagenet"};
  return names;
}

DataSpec parse_data_spec(const std::string& text) {
  const size_t question = text.rfind('?');
  const std::string place = text.substr(0, question);
  const size_t colon = place.find(':');
  DataSpec spec;
  spec.name = place.substr(0, colon);
  if (colon != std::string::npos) spec.path = place.substr(colon + 1);
  check_known(spec.name);
  if (question == std::string::npos) return spec;
  if (spec.name != "imagenet")
    fail("data set '", spec.name, "' takes no options ('", text.substr(question),
         "'); only imagenet takes ?resize=N&crop=M");
  std::istringstream options(text.substr(question + 1));
  for (std::string option; std::getline(options, option, '&');) {
    const size_t eq = option.find('=');
    const std::string key = option.substr(0, eq);
    int* target = key == "resize" ? &spec.resize : key == "crop" ? &spec.crop : nullptr;
    if (!target || eq == std::string::npos)
      fail("unknown data set option '", option, "' in '", text, "': expected resize=N or crop=N");
    const std::string value = option.substr(eq + 1);
    const std::optional<int64_t> n = parse_integer(value);
    if (!n || *n <= 0 || *n > std::numeric_limits<int>::max())
      fail("data set option ", key, "='", value, "' in '", text, "': expected a positive integer");
    *target = static_cast<int>(*n);
  }
  if (spec.crop > spec.resize)
    fail("data set '", text, "': crop ", spec.crop, " is larger than resize ", spec.resize,
         "; expected crop <= resize");
  return spec;
}

std::string default_data_path(const std::string& name) {
  check_known(name);
  if (name == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  return data_dir() + "/" + name;
}

Dataset load_dataset(const DataSpec& spec, Split split) {
  check_known(spec.name);
  const fs::path folder = spec.path.empty() ? default_data_path(spec.name) : spec.path;
  if (!fs::is_directory(folder)) {
    fail("data set '", spec.name, "': folder '", folder.string(), "' not found; expected ",
         expected_contents(spec.name), " there");
  }
  Dataset out = spec.name == "cifar10"    ? load_cifar_split(folder, split)
                : spec.name == "imagenet" ? load_imagenet_split(spec, folder, split)
                                          : load_idx_split(spec.name, folder, split);
  out.name = spec.name;
  // An empty split would evaluate to an accuracy of 0 % and a campaign over no images.
  if (out.size() == 0)
    fail("data set '", spec.name, "': the ", split == Split::Train ? "training" : "test",
         " split in folder '", folder.string(), "' holds no images");
  return out;
}

}  // namespace flipguard
