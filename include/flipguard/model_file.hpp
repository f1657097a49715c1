#pragma once
/// \file
/// flipguard model files: one file holds the architecture, the float weights and, if quantized,
/// the fixed-point formats.
///
/// Layout (little-endian): 8-byte magic "FLIPGRD\n", uint32 format version, uint64 header length,
/// the header as JSON (architecture, formats, metadata, the list of tensors), the tensors' raw
/// float32 data in header order, and a CRC-32 of everything before it.
#include <flipguard/fixed_point.hpp>
#include <flipguard/io.hpp>
#include <flipguard/network.hpp>

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace flipguard {

/// Current model file format version; files of a newer version are rejected. Version 2 added
/// additions, grouped convolutions and clamps; a file with none of them is written as version 1.
constexpr uint32_t kModelFormatVersion = 2;

/// A network with its (optional) quantization and free-form metadata (provenance, accuracy).
struct Model {
  Network net;
  std::optional<QuantFormats> quant;
  nlohmann::json meta = nlohmann::json::object();
};

/// Writes a model atomically (temporary file, then rename).
void save_model(const Model& model, const std::string& path);

/// Reads a model; throws Error saying what is wrong for a missing, truncated or corrupt file, a
/// file of another kind or of a newer format version.
Model load_model(const std::string& path);

}  // namespace flipguard
