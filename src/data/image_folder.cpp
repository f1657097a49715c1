/// \file
/// Image-folder trees `root/<class>/*.{jpg,jpeg,png}`, decoded with OpenCV on all cores.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "flipguard/data.hpp"
#include "flipguard/error.hpp"
#include "flipguard/io.hpp"
#include "flipguard/limits.hpp"
#include "flipguard/parallel.hpp"

namespace flipguard {

namespace {

namespace fs = std::filesystem;

/// One image to decode and the class it belongs to.
struct ImageFile {
  std::string path;
  int64_t label;
};

/// Height, width and channel count that every image of a folder tree must share.
struct ImageShape {
  int height = 0;
  int width = 0;
  int channels = 0;
  bool operator==(const ImageShape& o) const {
    return height == o.height && width == o.width && channels == o.channels;
  }
};

/// "32x32 with 3 channels"
std::string describe(const ImageShape& s) {
  return std::to_string(s.height) + "x" + std::to_string(s.width) + " with " +
         std::to_string(s.channels) + (s.channels == 1 ? " channel" : " channels");
}

/// Hidden entries (".git", macOS "._x.jpg" resource forks) are never data.
bool is_hidden(const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; }

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

/// Sorted names of the non-hidden entries of `folder` that satisfy `keep`.
template <typename Keep>
std::vector<std::string> sorted_entries(const fs::path& folder, Keep keep) {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder)) {
    if (!is_hidden(entry.path()) && keep(entry)) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// Width and height from the header of a JPEG (its first frame header, SOF0..SOF15) or PNG
/// (IHDR) file, read before decoding so that a header claiming a huge image is refused unread;
/// {0, 0} when the header holds none.
std::pair<int64_t, int64_t> header_size(const std::string& b, bool png) {
  auto byte = [&](size_t i) { return static_cast<int64_t>(static_cast<unsigned char>(b[i])); };
  auto be16 = [&](size_t i) { return byte(i) << 8 | byte(i + 1); };
  if (png) {
    if (b.size() < 24 || b.compare(12, 4, "IHDR") != 0) return {0, 0};
    return {be16(16) << 16 | be16(18), be16(20) << 16 | be16(22)};
  }
  size_t i = 2;
  while (i + 4 <= b.size()) {
    if (byte(i) != 0xFF) return {0, 0};
    const int64_t marker = byte(i + 1);
    if (marker == 0xFF) { ++i; continue; }  // fill byte
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }
    if (marker == 0xDA || marker == 0xD9) return {0, 0};  // scan or end before any frame
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                       marker != 0xCC;
    if (frame) {
      if (i + 9 > b.size()) return {0, 0};
      return {be16(i + 7), be16(i + 5)};  // precision, height, width
    }
    i += 2 + static_cast<size_t>(be16(i + 2));
  }
  return {0, 0};
}

/// Decodes one file as 8-bit grey (1 channel) or colour (3 channels, still in OpenCV's BGR
/// order; always colour when `color`); an alpha channel is dropped.
cv::Mat decode(const std::string& path, bool color) {
  const std::string bytes = read_file(path, "image");
  // Only JPEG and PNG reach OpenCV, which would decode any format it knows (JPEG 2000, TIFF,
  // ...) whatever the file's name says.
  const bool jpeg = bytes.size() >= 3 && bytes.compare(0, 3, "\xFF\xD8\xFF") == 0;
  const bool png = bytes.size() >= 8 && bytes.compare(0, 8, "\x89PNG\r\n\x1A\n") == 0;
  if (!jpeg && !png)
    fail("image '", path, "' is neither a JPEG nor a PNG file: its first bytes are not the "
         "JPEG (FF D8 FF) or PNG (89 'PNG' 0D 0A 1A 0A) signature");
  const auto [width, height] = header_size(bytes, png);
  if (width <= 0 || height <= 0 || width > kMaxImagePixels || height > kMaxImagePixels ||
      width * height > kMaxImagePixels)
    fail("image '", path, "' has a header of ", width, "x", height, " pixels; expected a ",
         png ? "PNG" : "JPEG", " image of at least 1x1 and at most ", kMaxImagePixels, " pixels");
  // libjpeg decodes a truncated JPEG as far as it goes, fills the rest grey and only warns
  // ("Premature end of JPEG file", without the file's name): a JPEG must end with its
  // end-of-image marker (FF D9; trailing padding of zero or white-space bytes allowed).
  if (jpeg) {
    size_t end = bytes.size();
    while (end > 2 && (bytes[end - 1] == '\0' || bytes[end - 1] == '\n' || bytes[end - 1] == '\r' ||
                       bytes[end - 1] == ' '))
      --end;
    if (end < 4 || static_cast<unsigned char>(bytes[end - 2]) != 0xFF ||
        static_cast<unsigned char>(bytes[end - 1]) != 0xD9)
      fail("image '", path, "' is a truncated JPEG file: it does not end with the end-of-image ",
           "marker FF D9 (", bytes.size(), " bytes)");
  }
  cv::Mat image;
  try {
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8U,
                      const_cast<char*>(bytes.data()));
    image = cv::imdecode(raw, color ? cv::IMREAD_COLOR : cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    fail("cannot decode image '", path, "': ", e.what());
  }
  if (image.empty()) fail("cannot decode image '", path, "': not a readable JPEG or PNG file");
  if (image.depth() != CV_8U) {
    fail("image '", path, "' has ", image.elemSize1() * 8, "-bit samples, expected 8-bit");
  }
  if (image.channels() == 4) {
    cv::Mat bgr;
    cv::cvtColor(image, bgr, cv::COLOR_BGRA2BGR);
    image = bgr;
  }
  if (image.channels() != 1 && image.channels() != 3) {
    fail("image '", path, "' has ", image.channels(), " channels, expected 1 (grey) or 3 (colour)");
  }
  return image;
}

ImageShape shape_of(const cv::Mat& image) { return {image.rows, image.cols, image.channels()}; }

/// Python's round() of x / 2 for an integer x: halves go to the even neighbour.
int half_to_even(int x) {
  const int q = x / 2;
  return x % 2 == 0 || q % 2 == 0 ? q : q + 1;
}

/// torchvision's Resize(t.resize) then CenterCrop(t.crop) (see ImageTransform).
cv::Mat transformed(const cv::Mat& image, const ImageTransform& t, const std::string& path) {
  if (t.resize <= 0 && t.crop <= 0) return image;
  cv::Mat out = image;
  if (t.resize > 0) {
    const bool wide = image.cols >= image.rows;
    const int shorter = wide ? image.rows : image.cols, longer = wide ? image.cols : image.rows;
    if (shorter != t.resize) {
      const int scaled = static_cast<int>(static_cast<double>(t.resize) * longer / shorter);
      const cv::Size size = wide ? cv::Size(scaled, t.resize) : cv::Size(t.resize, scaled);
      cv::resize(image, out, size, 0, 0, shorter > t.resize ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
  }
  if (t.crop > 0) {
    if (out.rows < t.crop || out.cols < t.crop)
      fail("image '", path, "' is ", out.rows, "x", out.cols, " after resizing, smaller than the ",
           t.crop, "x", t.crop, " crop");
    const int top = half_to_even(out.rows - t.crop), left = half_to_even(out.cols - t.crop);
    out = out(cv::Rect(left, top, t.crop, t.crop)).clone();
  }
  return out;
}

/// Writes an interleaved H x W x C image (BGR for colour) into `out` as C x H x W planes in RGB
/// order.
void store_planar_rgb(const cv::Mat& image, uint8_t* out) {
  const int channels = image.channels();
  const int64_t plane = int64_t{image.rows} * image.cols;
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* row = image.ptr<uint8_t>(y);
    for (int x = 0; x < image.cols; ++x) {
      const int64_t pixel = int64_t{y} * image.cols + x;
      for (int c = 0; c < channels; ++c) {
        const int source = channels == 3 ? 2 - c : c;  // BGR -> RGB
        out[c * plane + pixel] = row[x * channels + source];
      }
    }
  }
}

/// Decodes and transforms `file` into `out` (its C x H x W slot of the images tensor), checking
/// its shape.
void load_into(const ImageFile& file, const ImageTransform& t, const ImageShape& expected,
               const std::string& first_path, uint8_t* out) {
  const cv::Mat image = transformed(decode(file.path, t.color), t, file.path);
  const ImageShape shape = shape_of(image);
  if (!(shape == expected)) {
    fail("image '", file.path, "' is ", describe(shape), ", expected ", describe(expected),
         " like the first image '", first_path, "'");
  }
  store_planar_rgb(image, out);
}

/// Decodes every file into `images` with one worker per hardware thread; each worker takes the
/// next undone index. Rethrows the error of the lowest-numbered failing file seen; workers stop
/// taking new files once any has failed.
void decode_all(const std::vector<ImageFile>& files, const ImageTransform& t,
                const ImageShape& shape, uint8_t* images) {
  const int64_t image_bytes = int64_t{shape.height} * shape.width * shape.channels;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  size_t error_index = files.size();
  std::exception_ptr error;

  auto worker = [&](int) {
    while (!failed.load(std::memory_order_relaxed)) {
      const size_t i = next.fetch_add(1);
      if (i >= files.size()) return;
      try {
        load_into(files[i], t, shape, files[0].path, images + i * image_bytes);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (i < error_index) {
          error_index = i;
          error = std::current_exception();
        }
        failed = true;
      }
    }
  };

  const size_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const size_t count = std::min(hardware, files.size());
  parallel_for(static_cast<int>(count), worker);
  if (error) std::rethrow_exception(error);
}

}  // namespace

Dataset load_image_folder(const std::string& root, const ImageTransform& transform) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    fail("image folder '", root, "' does not exist or is not a folder; expected ", root,
         "/<class>/*.jpg, *.jpeg or *.png");
  }
  Dataset out;
  out.class_names = sorted_entries(root, [](const fs::directory_entry& e) {
    return e.is_directory();
  });
  std::vector<std::vector<ImageFile>> per_class;
  size_t longest = 0;
  for (size_t label = 0; label < out.class_names.size(); ++label) {
    const fs::path folder = fs::path(root) / out.class_names[label];
    per_class.emplace_back();
    for (const std::string& name : sorted_entries(folder, [](const fs::directory_entry& e) {
           return e.is_regular_file() && has_image_extension(e.path());
         })) {
      per_class.back().push_back({(folder / name).string(), static_cast<int64_t>(label)});
    }
    longest = std::max(longest, per_class.back().size());
  }
  // Interleave the classes (the first image of every class, then the second, ...) so that the
  // first N images of a split, which `--images N` and `--limit N` take, cover every class.
  std::vector<ImageFile> files;
  for (size_t i = 0; i < longest; ++i)
    for (const auto& cls : per_class)
      if (i < cls.size()) files.push_back(cls[i]);
  if (files.empty()) {
    fail("no images in image folder '", root, "' (", out.class_names.size(),
         " class folders); expected ", root, "/<class>/*.jpg, *.jpeg or *.png");
  }

  const ImageShape shape = shape_of(
      transformed(decode(files[0].path, transform.color), transform, files[0].path));
  const int64_t n = static_cast<int64_t>(files.size());
  out.images = torch::empty({n, shape.channels, shape.height, shape.width}, torch::kUInt8);
  decode_all(files, transform, shape, out.images.data_ptr<uint8_t>());
  out.labels = torch::empty({n}, torch::kInt64);
  int64_t* labels = out.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) labels[i] = files[i].label;
  return out;
}

}  // namespace flipguard
