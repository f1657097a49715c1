#pragma once
/// \file
/// Result files: NumPy .npy arrays, CSV tables, JSON, and figures rendered by gnuplot. Every
/// file is written to a temporary name and renamed, so an interrupted run leaves none half
/// written.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace flipguard {

/// The bytes of a .npy file (format 1.0, little-endian, C order) holding `data` as float64 or
/// int64 with shape `shape`. Throws Error when the shape does not match the data.
std::string npy_bytes(const std::vector<double>& data, const std::vector<int64_t>& shape);
std::string npy_bytes(const std::vector<int64_t>& data, const std::vector<int64_t>& shape);

/// Writes an array as a .npy file, atomically.
void write_npy(const std::string& path, const std::vector<double>& data,
               const std::vector<int64_t>& shape);

/// An array read from a .npy file: its shape and its elements as float64, in C order.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<double> data;
};

/// Reads a .npy file of format 1.0 or 2.0 in C order holding little-endian float64, float32,
/// int64 or int32 (what numpy and write_npy write). Throws Error naming the file and what was
/// wrong: missing, truncated, not a .npy file, another element type or Fortran order.
NpyArray read_npy(const std::string& path);

/// A CSV table: a header row and rows of already formatted cells.
struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string str() const;  ///< RFC 4180 text; cells with a comma or quote are quoted
};
void write_csv(const std::string& path, const CsvTable& t);

/// Writes JSON (indented) atomically.
void write_json(const std::string& path, const nlohmann::json& j);

/// Reads a JSON file; throws Error naming `what` and the path when it cannot be read or is not
/// valid JSON.
nlohmann::json read_json(const std::string& path, const std::string& what);

/// A number as text that reads back to the same double (shortest round trip up to 17 digits).
std::string format_number(double v);

/// A number for a results file: `v`, or null when it is not finite (a rank correlation of
/// constant values, a reduction from zero).
nlohmann::json json_number(double v);

/// A number with `places` decimals ("%.*f"), or `missing` when it is NaN (undefined).
std::string format_fixed(double v, int places, const std::string& missing = "n/a");

/// A duration for progress lines: "42s", "3m07s", "2h15m".
std::string format_duration(double seconds);

/// A size in binary units, three significant digits: "512 bytes", "6.64 MiB", "1.5 GiB".
std::string format_bytes(double bytes);

/// One curve of a figure.
struct Series {
  std::string title;
  std::vector<double> x, y;
  std::vector<double> y_low, y_high;  ///< error bars (optional; same length as y)
  std::string style = "lines";        ///< gnuplot style: lines, linespoints, histeps, boxes, ...
};

/// A figure: axes and series.
struct Plot {
  std::string title, xlabel, ylabel;
  bool logx = false, logy = false;
  double xmin = NAN, xmax = NAN;  ///< NAN: automatic
  std::vector<Series> series;
};

/// The gnuplot script (data inline) that renders `p` as SVG to the file named by the gnuplot
/// variable `out`, or to `default_output` when `out` is not set.
std::string gnuplot_script(const Plot& p, const std::string& default_output);

/// Writes `script_path` (the script) and renders `svg_path` with gnuplot, both atomically.
/// Returns an empty string on success, otherwise why the figure was not rendered (gnuplot
/// missing or failing); the script is kept either way so the figure can be made later.
std::string render_plot(const Plot& p, const std::string& script_path, const std::string& svg_path);

/// A fraction as percent text with two decimals ("12.34 %"); "–" for a JSON value that is
/// not a number (a rate that was not measured).
std::string percent(const nlohmann::json& fraction);

/// report.html of `flipguard reproduce`: from its results.json object `results` (the keys of
/// docs/harden.md), the tables of models, failure rates, reductions and bit error rates, the
/// figures of `results["figures"]` (SVG files in `directory`) inlined, and the commands; a
/// self-contained page.
std::string study_report_html(const nlohmann::json& results, const std::string& directory);

}  // namespace flipguard
