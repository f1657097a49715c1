#pragma once
/// \file
/// Image classification data sets: MNIST and Fashion-MNIST (IDX files, plain or gzip), CIFAR-10
/// (the binary layout `cifar-10-batches-bin` or an image-folder tree `train/<class>/*.jpg`) and
/// ImageNet (`DIR/<wnid>/*.JPEG`, resized and centre-cropped as torchvision's models expect).
#include <torch/torch.h>

#include <string>
#include <vector>

namespace flipguard {

/// One split of a data set, held in memory as raw 8-bit pixels.
struct Dataset {
  std::string name;                      ///< registry name, e.g. "mnist"
  torch::Tensor images;                  ///< uint8, N x C x H x W
  torch::Tensor labels;                  ///< int64, N
  std::vector<std::string> class_names;  ///< index = class label
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  /// The first n images (all when n <= 0 or n >= size()).
  Dataset head(int64_t n) const;
};

enum class Split { Train, Test };

/// Which data set and where: parsed from `NAME[:PATH][?resize=N&crop=M]`.
struct DataSpec {
  std::string name;  ///< one of data_set_names()
  std::string path;  ///< empty: the default location of that data set
  int resize = 256;  ///< imagenet: the short side is resized to this many pixels first
  int crop = 224;    ///< imagenet: then the central crop x crop pixels are kept
};

/// The known data set names: "mnist", "fashion-mnist", "cifar10", "imagenet".
const std::vector<std::string>& data_set_names();

/// Parses `NAME[:PATH][?resize=N&crop=M]` (the options only for imagenet); throws Error listing
/// the known names for an unknown one, and saying what is wrong with a bad option.
DataSpec parse_data_spec(const std::string& text);

/// Default folder of a data set: fashion-mnist at /usr/share/datasets/fashion-mnist, the others
/// under $FLIPGUARD_DATA_DIR (default ~/.cache/flipguard), where `./run setup` puts them.
std::string default_data_path(const std::string& name);

/// $FLIPGUARD_DATA_DIR, else $XDG_CACHE_HOME/flipguard, else $HOME/.cache/flipguard: where
/// `./run setup` puts the data sets (and the pre-trained SqueezeNet, squeezenet1_1.pt).
std::string data_dir();

/// Loads one split. Throws Error naming the file and what was wrong when a file is missing,
/// truncated or has a wrong magic number or shape.
Dataset load_dataset(const DataSpec& spec, Split split);

// The individual loaders, exposed for tests.

/// IDX image file (magic 0x00000803, N x H x W uint8) plus IDX label file (magic 0x00000801);
/// either may be gzip-compressed. Returns N x 1 x H x W.
Dataset load_idx(const std::string& images_file, const std::string& labels_file);

/// CIFAR-10 binary files: records of 1 label byte + 3072 pixel bytes (3 x 32 x 32, RGB planes).
Dataset load_cifar_binary(const std::vector<std::string>& files);

/// How the images of a folder are brought to one size, as torchvision's `Resize(resize)` and
/// `CenterCrop(crop)` do: the short side is scaled to `resize` pixels (the long side to
/// floor(resize * long / short)); OpenCV's area interpolation when shrinking, bilinear when
/// enlarging), then the central crop x crop pixels are kept (top-left corner at
/// round((size - crop) / 2), ties to even as Python rounds). 0: no resizing or cropping.
struct ImageTransform {
  int resize = 0;
  int crop = 0;
  bool color = false;  ///< decode every image as RGB, grey-scale ones too
};

/// Image-folder tree `root/<class>/*.{jpg,jpeg,png}`; class index = sorted folder name order.
/// Images come interleaved by class (file 0 of every class, then file 1, ...; files sorted by
/// name), so that the first N images cover every class.
/// Without a transform every image must have the same size; colour images are returned as RGB
/// (3 channels), grey-scale folders as 1 channel.
Dataset load_image_folder(const std::string& root, const ImageTransform& transform = {});

}  // namespace flipguard
