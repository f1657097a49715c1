#pragma once
/// \file
/// Reading archives that LibTorch's own reader opens (TorchScript modules, training
/// checkpoints) without trusting that reader with damaged files. LibTorch 1.13 is not safe on
/// them: fuzz_torchscript found archives that make its type parser
/// (ScriptTypeParser::parseClassConstant) dereference a bad pointer, and debug records that make
/// its unpickler allocate gigabytes (docs/results/fuzzing.md).
#include <exception>
#include <functional>
#include <string>

namespace flipguard {

/// The first line of what LibTorch threw: c10::Error without its backtrace, or the message of
/// the exceptions of its own that the archive's compiler (torch::jit::ErrorReport) and
/// unpickler throw.
std::string torch_message(const std::exception& e);

/// Runs `read` (which opens the file at `path` with LibTorch and reads what the caller will
/// read) in a forked child process: the signals of a crash at their default action, the address
/// space bounded to what the process has mapped plus 8 times the file and 1 GiB (a record that
/// claims more fails at once), the answer over a pipe. Returns the empty string when `read`
/// returned; otherwise why not: the first line of what it threw (torch_message), or "LibTorch's
/// reader crashed on it (SIGNAL)". An Error that `read` threw is thrown here, as it was; so is
/// one when no child can be started.
std::string read_in_child(const std::string& path, const std::function<void()>& read);

}  // namespace flipguard
