#pragma once
/// \file
/// Files as flipguard writes and checks them: one atomic writer and one CRC-32 for the whole
/// library, so that every result, model file, checkpoint and figure is written the same way.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>
#include <utility>

namespace flipguard {

/// Writes `bytes` to `path` through a temporary file in the same folder (`path.tmp.PID`) and a
/// rename, so that an interrupted write never leaves a half-written file behind: SIGINT and
/// SIGTERM delete the temporary file (interrupt.hpp), and the temporary files of processes that
/// were killed outright are deleted by the next write of `path`. Throws Error naming the path
/// when the temporary file cannot be created, written or renamed (it is removed).
void write_file_atomic(const std::string& path, const std::string& bytes);

/// Writes several files that belong together (eval's predictions and scores): every temporary
/// file first, then the renames with SIGINT and SIGTERM held back, so an interruption leaves
/// all of the earlier files or all of the new ones (only SIGKILL or a power cut in the
/// microseconds between two renames can split them). Throws Error as write_file_atomic does.
void write_files_atomic(const std::vector<std::pair<std::string, std::string>>& files);

/// Deletes `path.tmp.PID` files that processes no longer running (killed between write and
/// rename) left beside `path`; those of running processes stay. On one machine's processes.
void remove_stale_temporaries(const std::string& path);

/// The whole contents of a file. Throws Error naming `what` and the path when it cannot be read
/// (missing, a folder, unreadable).
std::string read_file(const std::string& path, const std::string& what = "file");

/// The first `n` bytes of a file (fewer if it is shorter), read without reading the rest: what a
/// reader checks its magic on before it reads a file of any size (a device such as /dev/zero
/// never ends). Throws Error as read_file does.
std::string read_file_head(const std::string& path, size_t n, const std::string& what = "file");

/// CRC-32 (zlib's polynomial) of `size` bytes at `data`.
uint32_t crc32_of(const void* data, size_t size);

/// CRC-32 of a whole file (read through read_file).
uint32_t file_crc32(const std::string& path, const std::string& what = "file");

}  // namespace flipguard
