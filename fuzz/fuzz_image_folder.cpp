// Fuzz target: an image folder (load_image_folder: CIFAR-10 as JPEG, the ImageNet sample) with
// one corrupt or odd image in it. The first byte chooses the file's extension (bit 0: .png, else
// .jpg), colour decoding (bit 1) and the transform (bits 2-3: none, resize 8 crop 6, resize 40
// crop 32, crop 4 alone) and whether a second class holds a valid 4x4 grey PNG (bit 4); the rest
// is the image.
#include <flipguard/data.hpp>

#include "fuzz.hpp"

#include <opencv2/imgcodecs.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flipguard::fuzz::Parts parts(data, size);
  const uint8_t choice = parts.byte();
  static const std::string root = (flipguard::fuzz::work_dir() / "folder").string();
  static const std::vector<uchar> png = [] {
    std::vector<uchar> b;
    cv::imencode(".png", cv::Mat(4, 4, CV_8UC1, cv::Scalar(128)), b);
    return b;
  }();
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  if (choice & 16)
    flipguard::fuzz::write_input("folder/b/0.png", {reinterpret_cast<const char*>(png.data()), png.size()});
  flipguard::fuzz::write_input(choice & 1 ? "folder/a/0.png" : "folder/a/0.jpg", parts.rest());
  flipguard::ImageTransform t;
  t.color = choice & 2;
  switch ((choice >> 2) & 3) {
    case 1: t.resize = 8; t.crop = 6; break;
    case 2: t.resize = 40; t.crop = 32; break;
    case 3: t.crop = 4; break;
    default: break;
  }
  flipguard::fuzz::expect_clean([&] { flipguard::load_image_folder(root, t); });
  return 0;
}
