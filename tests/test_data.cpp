/// \file
/// Tests of the data set loaders (src/data/): IDX, CIFAR-10 binary, image folders, specs and
/// default paths, on small generated files, plus the real MNIST and Fashion-MNIST test splits.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include <opencv2/imgcodecs.hpp>

#include "flipguard/data.hpp"
#include "flipguard/error.hpp"
#include "helpers.hpp"

namespace fs = std::filesystem;
using flipguard::Dataset;
using flipguard::DataSpec;
using flipguard::test::error_of;
using flipguard::test::TempDir;
using flipguard::Split;

namespace {

using Bytes = std::vector<uint8_t>;

void write_plain(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

void append_be32(Bytes& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(value >> shift));
}

/// An IDX file: magic, big-endian dimensions, then `data`.
Bytes idx_file(uint32_t magic, const std::vector<uint32_t>& dims, const Bytes& data) {
  Bytes out;
  append_be32(out, magic);
  for (uint32_t d : dims) append_be32(out, d);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// A small IDX data set: 3 images of 2 x 4 pixels with distinct values, labels 3, 0, 9.
constexpr uint32_t kN = 3, kH = 2, kW = 4;
const Bytes kLabels = {3, 0, 9};

Bytes test_pixels() {
  Bytes pixels;
  for (uint32_t i = 0; i < kN * kH * kW; ++i) pixels.push_back(static_cast<uint8_t>(i * 7 + 1));
  return pixels;
}
Bytes test_image_file() { return idx_file(0x00000803, {kN, kH, kW}, test_pixels()); }
Bytes test_label_file() { return idx_file(0x00000801, {kN}, kLabels); }

/// Checks that `data` holds exactly the small IDX data set above.
void expect_test_idx(const Dataset& data) {
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{kN, 1, kH, kW}));
  EXPECT_EQ(data.images.dtype(), torch::kUInt8);
  EXPECT_EQ(data.labels.dtype(), torch::kInt64);
  const Bytes pixels = test_pixels();
  const torch::Tensor flat = data.images.contiguous().view(-1);
  for (size_t i = 0; i < pixels.size(); ++i) {
    ASSERT_EQ(flat[static_cast<int64_t>(i)].item<int>(), pixels[i]) << "pixel " << i;
  }
  for (uint32_t i = 0; i < kN; ++i) EXPECT_EQ(data.labels[i].item<int64_t>(), kLabels[i]);
}

/// The message of the flipguard::Error that `action` throws; fails the test when none is thrown.
::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

/// Sets an environment variable for the life of the object, then restores the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? setenv(name, value, 1) : unsetenv(name);
  }
  ~ScopedEnv() { old_ ? setenv(name_, old_->c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

// ---- IDX --------------------------------------------------------------------------------------

TEST(Idx, PlainFilesRoundTrip) {
  TempDir dir;
  write_plain(dir.file("images"), test_image_file());
  write_plain(dir.file("labels"), test_label_file());
  const Dataset data = flipguard::load_idx(dir.file("images"), dir.file("labels"));
  expect_test_idx(data);
  EXPECT_EQ(data.class_names, (std::vector<std::string>{"0", "1", "2", "3", "4", "5", "6", "7",
                                                        "8", "9"}));
}

TEST(Idx, GzipFilesRoundTrip) {
  TempDir dir;
  write_gzip(dir.file("images.gz"), test_image_file());
  write_gzip(dir.file("labels.gz"), test_label_file());
  expect_test_idx(flipguard::load_idx(dir.file("images.gz"), dir.file("labels.gz")));
}

TEST(Idx, TruncatedFileNamesFileAndSizes) {
  TempDir dir;
  Bytes images = test_image_file();  // 16 header + 24 data bytes
  images.resize(30);
  write_plain(dir.file("short-images"), images);
  write_plain(dir.file("labels"), test_label_file());
  const std::string message = error_of(
      [&] { flipguard::load_idx(dir.file("short-images"), dir.file("labels")); });
  EXPECT_TRUE(contains(message, dir.file("short-images")));
  EXPECT_TRUE(contains(message, "truncated"));
  EXPECT_TRUE(contains(message, "expected 40 bytes"));
  EXPECT_TRUE(contains(message, "found 30"));
}

TEST(Idx, TruncatedGzipFileIsRejected) {
  TempDir dir;
  write_gzip(dir.file("images.gz"), test_image_file());
  write_gzip(dir.file("labels.gz"), test_label_file());
  fs::resize_file(dir.file("images.gz"), fs::file_size(dir.file("images.gz")) - 12);
  const std::string message =
      error_of([&] { flipguard::load_idx(dir.file("images.gz"), dir.file("labels.gz")); });
  EXPECT_TRUE(contains(message, dir.file("images.gz")));
}

TEST(Idx, TrailingBytesAreRejected) {
  TempDir dir;
  Bytes labels = test_label_file();
  labels.push_back(0);
  write_plain(dir.file("images"), test_image_file());
  write_plain(dir.file("labels"), labels);
  const std::string message =
      error_of([&] { flipguard::load_idx(dir.file("images"), dir.file("labels")); });
  EXPECT_TRUE(contains(message, dir.file("labels")));
  EXPECT_TRUE(contains(message, "trailing"));
}

TEST(Idx, WrongMagicNumberNamesFile) {
  TempDir dir;
  write_plain(dir.file("images"), test_image_file());
  write_plain(dir.file("labels"), test_label_file());
  // A label file where the image file should be.
  const std::string message =
      error_of([&] { flipguard::load_idx(dir.file("labels"), dir.file("labels")); });
  EXPECT_TRUE(contains(message, dir.file("labels")));
  EXPECT_TRUE(contains(message, "magic number 0x00000801"));
  EXPECT_TRUE(contains(message, "expected 0x00000803"));
}

TEST(Idx, CountMismatchAndBadLabelAreRejected) {
  TempDir dir;
  write_plain(dir.file("images"), test_image_file());
  write_plain(dir.file("two-labels"), idx_file(0x00000801, {2}, {1, 2}));
  write_plain(dir.file("bad-labels"), idx_file(0x00000801, {3}, {1, 10, 2}));
  EXPECT_TRUE(contains(
      error_of([&] { flipguard::load_idx(dir.file("images"), dir.file("two-labels")); }),
      "holds 2 labels"));
  const std::string message =
      error_of([&] { flipguard::load_idx(dir.file("images"), dir.file("bad-labels")); });
  EXPECT_TRUE(contains(message, dir.file("bad-labels")));
  EXPECT_TRUE(contains(message, "label 10 at index 1"));
}

TEST(Idx, MissingFileNamesIt) {
  TempDir dir;
  EXPECT_TRUE(contains(
      error_of([&] { flipguard::load_idx(dir.file("nope"), dir.file("nope2")); }),
      dir.file("nope")));
}

TEST(LoadDataset, IdxFolderFindsPlainAndGzipFiles) {
  TempDir dir;
  write_gzip(dir.file("t10k-images-idx3-ubyte.gz"), test_image_file());
  write_plain(dir.file("t10k-labels-idx1-ubyte"), test_label_file());
  const Dataset test = flipguard::load_dataset({"fashion-mnist", dir.str()}, Split::Test);
  expect_test_idx(test);
  EXPECT_EQ(test.name, "fashion-mnist");
  ASSERT_EQ(test.class_names.size(), 10u);
  EXPECT_EQ(test.class_names[0], "T-shirt/top");
  EXPECT_EQ(test.class_names[9], "Ankle boot");

  const std::string message =
      error_of([&] { flipguard::load_dataset({"mnist", dir.str()}, Split::Train); });
  EXPECT_TRUE(contains(message, dir.str()));
  EXPECT_TRUE(contains(message, "'train-images-idx3-ubyte'"));
  EXPECT_TRUE(contains(message, "'train-images-idx3-ubyte.gz'"));
}

// A split without images is refused, not evaluated to an accuracy of 0 % over nothing.
TEST(LoadDataset, EmptySplitIsRefused) {
  TempDir dir;
  write_plain(dir.file("t10k-images-idx3-ubyte"), idx_file(0x00000803, {0, kH, kW}, {}));
  write_plain(dir.file("t10k-labels-idx1-ubyte"), idx_file(0x00000801, {0}, {}));
  const std::string message =
      error_of([&] { flipguard::load_dataset({"mnist", dir.str()}, Split::Test); });
  for (const std::string& part :
       std::vector<std::string>{"data set 'mnist'", "test split", dir.str(), "holds no images"})
    EXPECT_TRUE(contains(message, part)) << part << " not in: " << message;
}

TEST(LoadDataset, MissingFolderSaysWhatIsExpected) {
  const std::string message =
      error_of([] { flipguard::load_dataset({"mnist", "/nonexistent/flipguard"}, Split::Test); });
  EXPECT_TRUE(contains(message, "/nonexistent/flipguard"));
  EXPECT_TRUE(contains(message, "./run setup"));
}

// ---- CIFAR-10 binary --------------------------------------------------------------------------

/// One CIFAR-10 record whose R, G and B planes hold distinct values derived from `seed`.
Bytes cifar_record(uint8_t label, int seed) {
  Bytes record = {label};
  for (int c = 0; c < 3; ++c) {
    for (int p = 0; p < 1024; ++p) record.push_back(static_cast<uint8_t>(seed + 50 * c + p % 40));
  }
  return record;
}

TEST(CifarBinary, RecordsRoundTripInRgbPlaneOrder) {
  TempDir dir;
  Bytes first = cifar_record(6, 1);
  const Bytes second = cifar_record(2, 9);
  first.insert(first.end(), second.begin(), second.end());
  write_plain(dir.file("a.bin"), first);
  write_plain(dir.file("b.bin"), cifar_record(9, 20));

  const Dataset data = flipguard::load_cifar_binary({dir.file("a.bin"), dir.file("b.bin")});
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({6, 2, 9}, torch::kInt64)));
  const int seeds[] = {1, 9, 20};
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < 3; ++c) {
      for (int p : {0, 33, 1023}) {  // pixel p of the plane is at row p / 32, column p % 32
        EXPECT_EQ(data.images[i][c][p / 32][p % 32].item<int>(), seeds[i] + 50 * c + p % 40)
            << "image " << i << " channel " << c << " pixel " << p;
      }
    }
  }
  EXPECT_EQ(data.class_names.front(), "airplane");
  EXPECT_EQ(data.class_names.back(), "truck");
}

TEST(CifarBinary, TruncatedFileIsRejected) {
  TempDir dir;
  Bytes bytes = cifar_record(1, 0);
  bytes.resize(3000);
  write_plain(dir.file("short.bin"), bytes);
  const std::string message = error_of([&] { flipguard::load_cifar_binary({dir.file("short.bin")}); });
  EXPECT_TRUE(contains(message, dir.file("short.bin")));
  EXPECT_TRUE(contains(message, "3000 bytes"));
  EXPECT_TRUE(contains(message, "multiple of 3073"));
  write_plain(dir.file("empty.bin"), {});
  EXPECT_TRUE(contains(error_of([&] { flipguard::load_cifar_binary({dir.file("empty.bin")}); }),
                       "0 bytes"));
}

TEST(LoadDataset, CifarBinaryBatchesInSubfolder) {
  TempDir dir;
  for (int i = 1; i <= 5; ++i) {
    write_plain(dir.file("cifar-10-batches-bin/data_batch_" + std::to_string(i) + ".bin"),
                cifar_record(static_cast<uint8_t>(i), i));
  }
  write_plain(dir.file("cifar-10-batches-bin/test_batch.bin"), cifar_record(0, 0));
  const Dataset train = flipguard::load_dataset({"cifar10", dir.str()}, Split::Train);
  EXPECT_EQ(train.name, "cifar10");
  EXPECT_TRUE(torch::equal(train.labels, torch::tensor({1, 2, 3, 4, 5}, torch::kInt64)));
  EXPECT_EQ(flipguard::load_dataset({"cifar10", dir.str()}, Split::Test).size(), 1);
}

// ---- Image folders ----------------------------------------------------------------------------

/// A height x width BGR image whose pixel (y, x) is (B, G, R) = (seed + y, seed + x, seed + 100).
cv::Mat bgr_image(int height, int width, int seed) {
  cv::Mat image(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) image.at<cv::Vec3b>(y, x) = cv::Vec3b(seed + y, seed + x, seed + 100);
  }
  return image;
}

void write_image(const std::string& path, const cv::Mat& image) {
  ASSERT_TRUE(cv::imwrite(path, image)) << path;
}

TEST(ImageFolder, PngsRoundTripAsRgbWithSortedClasses) {
  TempDir dir;
  // Created out of order; one upper-case extension; a stray non-image file that must be ignored.
  write_image(dir.file("zebra/b.png"), bgr_image(3, 5, 40));
  write_image(dir.file("zebra/a.PNG"), bgr_image(3, 5, 30));
  write_image(dir.file("ant/only.png"), bgr_image(3, 5, 10));
  write_plain(dir.file("ant/notes.txt"), {1, 2, 3});

  const Dataset data = flipguard::load_image_folder(dir.str());
  EXPECT_EQ(data.class_names, (std::vector<std::string>{"ant", "zebra"}));
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{3, 3, 3, 5}));
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({0, 1, 1}, torch::kInt64)));
  const int seeds[] = {10, 30, 40};  // ant/only, zebra/a, zebra/b
  for (int i = 0; i < 3; ++i) {
    for (int y = 0; y < 3; ++y) {
      for (int x = 0; x < 5; ++x) {
        EXPECT_EQ(data.images[i][0][y][x].item<int>(), seeds[i] + 100) << "R of image " << i;
        EXPECT_EQ(data.images[i][1][y][x].item<int>(), seeds[i] + x) << "G of image " << i;
        EXPECT_EQ(data.images[i][2][y][x].item<int>(), seeds[i] + y) << "B of image " << i;
      }
    }
  }
}

TEST(ImageFolder, GreyImagesKeepOneChannel) {
  TempDir dir;
  cv::Mat grey(4, 2, CV_8UC1);
  for (int i = 0; i < 8; ++i) grey.data[i] = static_cast<uint8_t>(i * 30);
  write_image(dir.file("digit/x.png"), grey);
  const Dataset data = flipguard::load_image_folder(dir.str());
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{1, 1, 4, 2}));
  EXPECT_EQ(data.images[0][0][3][1].item<int>(), 7 * 30);
}

TEST(ImageFolder, ManyImagesDecodeInParallelInOrder) {
  TempDir dir;
  for (int i = 0; i < 40; ++i) {
    write_image(dir.file("c" + std::to_string(i % 2) + "/" + std::to_string(100 + i) + ".png"),
                bgr_image(2, 2, i));
  }
  const Dataset data = flipguard::load_image_folder(dir.str());
  ASSERT_EQ(data.size(), 40);
  // Class c0 holds the even i, c1 the odd ones; interleaved by class, image k is i = k.
  for (int k = 0; k < 40; ++k) {
    EXPECT_EQ(data.images[k][0][0][0].item<int>(), k + 100) << "image " << k;
    EXPECT_EQ(data.labels[k].item<int64_t>(), k % 2);
  }
}

TEST(ImageFolder, MismatchedSizeIsRejected) {
  TempDir dir;
  write_image(dir.file("a/1.png"), bgr_image(3, 5, 0));
  write_image(dir.file("b/2.png"), bgr_image(4, 5, 0));
  const std::string message = error_of([&] { flipguard::load_image_folder(dir.str()); });
  EXPECT_TRUE(contains(message, dir.file("b/2.png")));
  EXPECT_TRUE(contains(message, "4x5 with 3 channels"));
  EXPECT_TRUE(contains(message, "expected 3x5 with 3 channels"));
}

TEST(ImageFolder, UndecodableAndEmptyAreRejected) {
  TempDir dir;
  EXPECT_TRUE(contains(error_of([&] { flipguard::load_image_folder(dir.str()); }), "no images"));
  write_image(dir.file("a/1.png"), bgr_image(3, 5, 0));
  write_plain(dir.file("a/2.jpg"), {'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'e', 'g'});
  const std::string message = error_of([&] { flipguard::load_image_folder(dir.str()); });
  EXPECT_TRUE(contains(message, dir.file("a/2.jpg")));
  EXPECT_TRUE(contains(error_of([&] { flipguard::load_image_folder(dir.file("missing")); }),
                       dir.file("missing")));
}

// A JPEG cut short (a failed download, a full disk) is refused with its name: libjpeg would
// decode it as far as it goes, fill the rest grey and only warn without naming the file. The
// whole file, and the file with padding after its end marker, decode as before.
TEST(ImageFolder, TruncatedJpegIsRejected) {
  TempDir dir;
  write_image(dir.file("a/whole.jpg"), bgr_image(16, 16, 20));
  const std::string whole = flipguard::test::slurp(dir.file("a/whole.jpg"));
  EXPECT_EQ(flipguard::load_image_folder(dir.str()).images.size(0), 1);
  std::ofstream(dir.file("a/padded.jpg"), std::ios::binary) << whole << std::string(7, '\0');
  const Dataset two = flipguard::load_image_folder(dir.str());
  ASSERT_EQ(two.images.size(0), 2);
  EXPECT_TRUE(torch::equal(two.images[0], two.images[1]));
  for (const size_t cut : {whole.size() - 2, whole.size() / 2}) {
    std::ofstream(dir.file("a/cut.jpg"), std::ios::binary) << whole.substr(0, cut);
    const std::string message = error_of([&] { flipguard::load_image_folder(dir.str()); });
    EXPECT_TRUE(contains(message, dir.file("a/cut.jpg"))) << message;
    EXPECT_TRUE(contains(message, "truncated JPEG")) << message;
  }
}

TEST(ImageFolder, AHeaderClaimingAHugeImageIsRefusedBeforeDecoding) {
  TempDir dir;
  write_image(dir.file("a/0.jpg"), bgr_image(16, 16, 20));
  write_image(dir.file("b/0.png"), bgr_image(16, 16, 20));
  EXPECT_EQ(flipguard::load_image_folder(dir.str()).images.size(0), 2);
  // The JPEG's frame header (SOF0: FF C0, length, precision, height, width) and the PNG's IHDR
  // say 40000 x 30000 pixels, 1.2e9 > 2^26: refused from the header, nothing decoded. (A 147-byte
  // JPEG like this, found by fuzz_image_folder, made libjpeg decode 981 million grey pixels.)
  std::string jpeg = flipguard::test::slurp(dir.file("a/0.jpg"));
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpeg.replace(sof + 5, 4, std::string("\x75\x30\x9C\x40", 4));
  std::ofstream(dir.file("a/0.jpg"), std::ios::binary | std::ios::trunc) << jpeg;
  std::string message = error_of([&] { flipguard::load_image_folder(dir.str()); });
  EXPECT_TRUE(contains(message, dir.file("a/0.jpg"))) << message;
  EXPECT_TRUE(contains(message, "header of 40000x30000 pixels")) << message;
  fs::remove(dir.file("a/0.jpg"));
  std::string png = flipguard::test::slurp(dir.file("b/0.png"));
  png.replace(16, 8, std::string("\x00\x00\x9C\x40\x00\x00\x75\x30", 8));
  std::ofstream(dir.file("b/0.png"), std::ios::binary | std::ios::trunc) << png;
  message = error_of([&] { flipguard::load_image_folder(dir.str()); });
  EXPECT_TRUE(contains(message, "header of 40000x30000 pixels")) << message;
}

TEST(ImageFolder, OnlyJpegAndPngAreDecoded) {
  TempDir dir;
  // A BMP named .png: OpenCV would decode it; the folder takes JPEG and PNG only.
  std::vector<uchar> bmp;
  ASSERT_TRUE(cv::imencode(".bmp", bgr_image(4, 4, 9), bmp));
  std::ofstream(dir.file("a/0.png"), std::ios::binary)
      << std::string(reinterpret_cast<const char*>(bmp.data()), bmp.size());
  const std::string message = error_of([&] { flipguard::load_image_folder(dir.str()); });
  EXPECT_TRUE(contains(message, "neither a JPEG nor a PNG")) << message;
}

TEST(LoadDataset, CifarImageFolders) {
  TempDir dir;
  const std::vector<std::string> classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                                            "dog",      "frog",       "horse", "ship", "truck"};
  for (const std::string& c : classes) {
    fs::create_directories(dir.file("train/" + c));
    fs::create_directories(dir.file("test/" + c));
  }
  write_image(dir.file("train/cat/0.png"), bgr_image(2, 2, 0));
  write_image(dir.file("train/bird/0.png"), bgr_image(2, 2, 0));
  write_image(dir.file("test/cat/0.png"), bgr_image(2, 2, 0));
  const Dataset train = flipguard::load_dataset({"cifar10", dir.str()}, Split::Train);
  EXPECT_EQ(train.name, "cifar10");
  EXPECT_EQ(train.size(), 2);
  EXPECT_EQ(train.class_names, classes);
  EXPECT_TRUE(torch::equal(train.labels, torch::tensor({2, 3}, torch::kInt64)));  // bird, cat

  // A class folder missing (or one too many) would shift every label after it: refused.
  fs::remove_all(dir.file("test/airplane"));
  fs::create_directories(dir.file("test/zebra"));
  const std::string shifted =
      error_of([&] { flipguard::load_dataset({"cifar10", dir.str()}, Split::Test); });
  for (const char* part : {"10 class folders", "missing: airplane", "not CIFAR-10 classes: zebra",
                           "labels are the ranks"})
    EXPECT_TRUE(contains(shifted, part)) << part << " not in: " << shifted;
  EXPECT_TRUE(contains(shifted, dir.file("test")));

  TempDir empty;
  const std::string message =
      error_of([&] { flipguard::load_dataset({"cifar10", empty.str()}, Split::Test); });
  EXPECT_TRUE(contains(message, empty.str()));
  EXPECT_TRUE(contains(message, "data_batch_1.bin"));
}

// ---- Specs, paths, head -----------------------------------------------------------------------

TEST(DataSpec, ParsesNameAndPath) {
  DataSpec spec = flipguard::parse_data_spec("mnist");
  EXPECT_EQ(spec.name, "mnist");
  EXPECT_EQ(spec.path, "");
  spec = flipguard::parse_data_spec("cifar10:/x/y");
  EXPECT_EQ(spec.name, "cifar10");
  EXPECT_EQ(spec.path, "/x/y");
  spec = flipguard::parse_data_spec("fashion-mnist:");
  EXPECT_EQ(spec.name, "fashion-mnist");
  EXPECT_EQ(spec.path, "");
  const std::string message = error_of([] { flipguard::parse_data_spec("imagenet2"); });
  EXPECT_TRUE(contains(message, "'imagenet2'"));
  EXPECT_TRUE(contains(message, "mnist, fashion-mnist, cifar10, imagenet"));
}

TEST(DataSpec, ImagenetTakesResizeAndCropOptions) {
  DataSpec spec = flipguard::parse_data_spec("imagenet:/data/ilsvrc");
  EXPECT_EQ(spec.path, "/data/ilsvrc");
  EXPECT_EQ(spec.resize, 256);
  EXPECT_EQ(spec.crop, 224);
  spec = flipguard::parse_data_spec("imagenet:/data/ilsvrc?resize=288&crop=256");
  EXPECT_EQ(spec.name, "imagenet");
  EXPECT_EQ(spec.path, "/data/ilsvrc");
  EXPECT_EQ(spec.resize, 288);
  EXPECT_EQ(spec.crop, 256);
  spec = flipguard::parse_data_spec("imagenet?crop=200");
  EXPECT_EQ(spec.path, "");
  EXPECT_EQ(spec.crop, 200);
  EXPECT_TRUE(contains(error_of([] { flipguard::parse_data_spec("mnist?crop=20"); }),
                       "only imagenet takes"));
  EXPECT_TRUE(contains(error_of([] { flipguard::parse_data_spec("imagenet?crop=300"); }),
                       "crop 300 is larger than resize 256"));
  EXPECT_TRUE(contains(error_of([] { flipguard::parse_data_spec("imagenet?size=3"); }),
                       "unknown data set option 'size=3'"));
  EXPECT_TRUE(contains(error_of([] { flipguard::parse_data_spec("imagenet?crop=12x"); }),
                       "crop='12x'"));
}

/// An image whose red channel at (y, x) is x mod 256 and green channel y mod 256, so that a crop
/// shows where it was taken.
cv::Mat coordinates_image(int height, int width) {
  cv::Mat image(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      image.at<cv::Vec3b>(y, x) = cv::Vec3b(0, static_cast<uint8_t>(y), static_cast<uint8_t>(x));
  return image;
}

TEST(ImageFolder, ImagenetResizesTheShortSideAndCropsTheCentreAsTorchvision) {
  TempDir dir;
  // Short side already 256 (no resizing): width 301 leaves 77 pixels, the crop starts at
  // round(38.5) = 38 (Python rounds halves to even); height 256 leaves 32: top 16.
  write_image(dir.file("n02/wide.png"), coordinates_image(256, 301));
  // Tall, short side 256: height 259 leaves 35, round(17.5) = 18.
  write_image(dir.file("n01/tall.png"), coordinates_image(259, 256));
  // Grey and twice too large: decoded as colour, shrunk to 256 x 300.
  write_image(dir.file("n01/grey.png"), cv::Mat(512, 600, CV_8UC1, cv::Scalar(77)));
  const Dataset data = flipguard::load_dataset({"imagenet", dir.str()}, Split::Test);
  EXPECT_EQ(data.name, "imagenet");
  EXPECT_EQ(data.class_names, (std::vector<std::string>{"n01", "n02"}));
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{3, 3, 224, 224}));
  // Interleaved by class: n01/grey, n02/wide, n01/tall.
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({0, 1, 0}, torch::kInt64)));
  EXPECT_TRUE(data.images[0].eq(77).all().item<bool>());
  EXPECT_EQ(data.images[1][0][0][0].item<int>(), 38);      // red: x of the crop's corner
  EXPECT_EQ(data.images[1][1][0][0].item<int>(), 16);      // green: y
  EXPECT_EQ(data.images[1][0][5][223].item<int>(), (38 + 223) % 256);
  EXPECT_EQ(data.images[1][1][5][223].item<int>(), 16 + 5);
  EXPECT_EQ(data.images[2][0][0][0].item<int>(), 16);  // width 256 leaves 32: left 16
  EXPECT_EQ(data.images[2][1][0][0].item<int>(), 18);
  // The same folder serves both splits when it has no train/ and val/.
  EXPECT_EQ(flipguard::load_dataset({"imagenet", dir.str()}, Split::Train).size(), 3);

  const DataSpec small = flipguard::parse_data_spec("imagenet:" + dir.str() + "?resize=128&crop=100");
  ASSERT_EQ(flipguard::load_dataset(small, Split::Test).images.sizes(),
            (std::vector<int64_t>{3, 3, 100, 100}));
}

TEST(ImageFolder, ImagenetReadsTrainAndValFoldersAndRejectsTooSmallImages) {
  TempDir dir;
  write_image(dir.file("train/n01/a.png"), coordinates_image(256, 256));
  write_image(dir.file("train/n02/a.png"), coordinates_image(256, 256));
  write_image(dir.file("val/n01/b.png"), coordinates_image(256, 256));
  EXPECT_EQ(flipguard::load_dataset({"imagenet", dir.str()}, Split::Train).size(), 2);
  EXPECT_EQ(flipguard::load_dataset({"imagenet", dir.str()}, Split::Test).size(), 1);
  const DataSpec big = flipguard::parse_data_spec("imagenet:" + dir.str() + "?resize=256&crop=256");
  write_image(dir.file("val/n01/c.png"), coordinates_image(40, 30));
  // 40 x 30 is enlarged to 341 x 256: fine for crop 256. A crop larger than the resized short
  // side cannot happen (parse_data_spec refuses it), so a truncated file is the error here.
  EXPECT_EQ(flipguard::load_dataset(big, Split::Test).images.size(3), 256);
  write_plain(dir.file("val/n01/d.png"), {0x89, 'P', 'N', 'G'});
  EXPECT_TRUE(contains(error_of([&] { flipguard::load_dataset(big, Split::Test); }), "d.png"));
}

TEST(DataSpec, DefaultPathsFollowEnvironment) {
  EXPECT_EQ(flipguard::default_data_path("fashion-mnist"), "/usr/share/datasets/fashion-mnist");
  {
    ScopedEnv data("FLIPGUARD_DATA_DIR", "/data");
    EXPECT_EQ(flipguard::default_data_path("mnist"), "/data/mnist");
  }
  ScopedEnv data("FLIPGUARD_DATA_DIR", nullptr);
  {
    ScopedEnv cache("XDG_CACHE_HOME", "/cache");
    EXPECT_EQ(flipguard::default_data_path("cifar10"), "/cache/flipguard/cifar10");
  }
  ScopedEnv cache("XDG_CACHE_HOME", nullptr);
  ScopedEnv home("HOME", "/home/u");
  EXPECT_EQ(flipguard::default_data_path("mnist"), "/home/u/.cache/flipguard/mnist");
  EXPECT_TRUE(contains(error_of([] { flipguard::default_data_path("svhn"); }), "'svhn'"));
}

TEST(Dataset, HeadTakesFirstImages) {
  Dataset data;
  data.images = torch::arange(5, torch::kUInt8).view({5, 1, 1, 1});
  data.labels = torch::arange(5, torch::kInt64);
  const Dataset two = data.head(2);
  EXPECT_EQ(two.size(), 2);
  EXPECT_EQ(two.images.size(0), 2);
  EXPECT_EQ(two.labels[1].item<int64_t>(), 1);
  EXPECT_EQ(data.head(0).size(), 5);
  EXPECT_EQ(data.head(9).size(), 5);
}

// ---- Real data sets (installed by `./run setup`) ----------------------------------------------

TEST(RealData, MnistTestSplit) {
  const std::string path = flipguard::default_data_path("mnist");
  ASSERT_TRUE(fs::is_directory(path)) << "MNIST not found at " << path << "; run ./run setup";
  const Dataset test = flipguard::load_dataset({"mnist", ""}, Split::Test);
  EXPECT_EQ(test.name, "mnist");
  ASSERT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.labels[0].item<int64_t>(), 7);
  EXPECT_EQ(test.labels.max().item<int64_t>(), 9);
}

TEST(RealData, FashionMnistTestSplit) {
  const std::string path = flipguard::default_data_path("fashion-mnist");
  ASSERT_TRUE(fs::is_directory(path))
      << "Fashion-MNIST not found at " << path << "; run ./run setup";
  const Dataset test = flipguard::load_dataset({"fashion-mnist", ""}, Split::Test);
  ASSERT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.class_names[test.labels[0].item<int64_t>()], "Ankle boot");
}
