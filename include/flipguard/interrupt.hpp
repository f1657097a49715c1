#pragma once
/// \file
/// SIGINT and SIGTERM: long runs stop at their next step with a checkpoint; anything else ends
/// as the signal would have ended it, without leaving half-written files behind.
#include <flipguard/error.hpp>

#include <string>

namespace flipguard {

/// Installs the handlers of SIGINT and SIGTERM (once; later calls do nothing). Outside a
/// StopScope the handler deletes the temporary files of write_file_atomic's writes in progress
/// and then ends the process as the signal's default would. Inside one it only records the
/// signal: the work polls stop_signal() and stops at its next step; a second signal ends the
/// process at once.
void install_stop_handlers();

/// The signal (SIGINT or SIGTERM) that asked the current StopScope's work to stop; 0 while none
/// did.
int stop_signal();

/// The name of a signal for messages: "SIGINT", "SIGTERM", else "signal N".
std::string signal_name(int sig);

/// While one lives, SIGINT and SIGTERM ask for a stop (stop_signal()) instead of ending the
/// process. Not nested.
class StopScope {
 public:
  StopScope();
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;
};

/// Thrown by work that stopped on a signal after saving its state; the program exits with
/// 128 + signal, as the signal would have ended it.
class Stopped : public Error {
 public:
  Stopped(int sig, const std::string& what) : Error(what), sig_(sig) {}
  int signal() const { return sig_; }

 private:
  int sig_;
};

namespace detail {
/// Registers a temporary file that the handler deletes should a signal end the process before
/// it is renamed into place (write_file_atomic); the registration ends with the object. At most
/// a few at once (one per thread that writes); more are written without the guard.
class TempFileGuard {
 public:
  explicit TempFileGuard(const std::string& path);
  ~TempFileGuard();
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;

 private:
  int slot_ = -1;
};
}  // namespace detail

}  // namespace flipguard
