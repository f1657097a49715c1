// The shared infrastructure: parallel_for, the atomic writer, read_file and the CRC-32.
#include <flipguard/error.hpp>
#include <flipguard/interrupt.hpp>
#include <flipguard/io.hpp>
#include <flipguard/parse.hpp>
#include <flipguard/parallel.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

TEST(ParallelFor, RunsEveryWorkerOnceWorkerZeroOnTheCallingThread) {
  for (int workers : {-1, 0, 1, 2, 5}) {
    std::vector<std::atomic<int>> runs(std::max(1, workers));
    std::thread::id zero;
    parallel_for(workers, [&](int w) {
      ++runs.at(w);
      if (w == 0) zero = std::this_thread::get_id();
    });
    for (auto& r : runs) EXPECT_EQ(r.load(), 1) << workers << " workers";
    EXPECT_EQ(zero, std::this_thread::get_id()) << workers << " workers";
  }
}

TEST(ParallelFor, RethrowsAWorkersExceptionAfterAllFinished) {
  std::atomic<int> finished{0};
  EXPECT_THROW(parallel_for(4,
                            [&](int w) {
                              if (w == 2) throw std::runtime_error("worker 2");
                              std::this_thread::sleep_for(std::chrono::milliseconds(20));
                              ++finished;
                            }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), 3);
}

TEST(ParallelFor, TicksOnTheCallingThreadWhileTheWorkersRun) {
  std::atomic<int> ticks{0}, done{0};
  const auto caller = std::this_thread::get_id();
  std::set<std::thread::id> ids;
  std::mutex m;
  parallel_for(
      3,
      [&](int) {
        {
          std::lock_guard<std::mutex> lock(m);
          ids.insert(std::this_thread::get_id());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(120));
        ++done;
      },
      std::chrono::milliseconds(10), [&] {
        EXPECT_EQ(std::this_thread::get_id(), caller);
        ++ticks;
      });
  EXPECT_EQ(done.load(), 3);
  EXPECT_GE(ticks.load(), 2);
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids.count(caller), 0u) << "with a tick, every worker has a thread of its own";
  // A tick's exception comes out after the workers end; a worker's wins over it.
  EXPECT_THROW(parallel_for(
                   2, [](int) { std::this_thread::sleep_for(std::chrono::milliseconds(50)); },
                   std::chrono::milliseconds(5), [] { throw Error("tick"); }),
               Error);
  try {
    parallel_for(
        2,
        [](int w) {
          std::this_thread::sleep_for(std::chrono::milliseconds(30));
          if (w == 1) throw std::runtime_error("worker");
        },
        std::chrono::milliseconds(5), [] {});
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "worker");
  }
}

TEST(Io, Crc32OfTheCheckString) {
  EXPECT_EQ(crc32_of("123456789", 9), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(crc32_of("", 0), 0u);
  TempDir d;
  write_file_atomic(d.file("check"), "123456789");
  EXPECT_EQ(file_crc32(d.file("check")), 0xCBF43926u);
}

TEST(Io, AtomicWriteReplacesTheFileAndLeavesNothingElse) {
  TempDir d;
  const std::string p = d.file("out.json");
  write_file_atomic(p, "first");
  write_file_atomic(p, "second");
  EXPECT_EQ(read_file(p), "second");
  EXPECT_EQ(d.count(), 1u);
  // Into a folder that is not there: an error naming the path, no file anywhere.
  const std::string missing = (d.path / "no-such-dir" / "x").string();
  EXPECT_TRUE(contains(error_of([&] { write_file_atomic(missing, "x"); }), missing));
  EXPECT_EQ(d.count(), 1u);
}

// Files that belong together are written all or none: when the second cannot be written, the
// first keeps its earlier contents and no temporary file is left.
TEST(Io, FilesThatBelongTogetherAreWrittenAllOrNone) {
  TempDir d;
  const std::string a = d.file("predictions.npy"), b = d.file("scores.npy");
  write_files_atomic({{a, "a1"}, {b, "b1"}});
  EXPECT_EQ(read_file(a), "a1");
  EXPECT_EQ(read_file(b), "b1");
  const std::string missing = (d.path / "no-such-dir" / "scores.npy").string();
  const std::string msg = error_of([&] { write_files_atomic({{a, "a2"}, {missing, "b2"}}); });
  EXPECT_TRUE(contains(msg, missing)) << msg;
  EXPECT_EQ(read_file(a), "a1");
  EXPECT_EQ(d.count(), 2u);
  write_files_atomic({{a, "a3"}, {b, "b3"}});
  EXPECT_EQ(read_file(a) + read_file(b), "a3b3");
  EXPECT_EQ(d.count(), 2u);
}

// A write killed between its write and its rename (SIGKILL) leaves OUT.tmp.PID behind: the next
// write of OUT removes it once that process is gone, and leaves a running process's alone.
TEST(Io, AtomicWriteRemovesTemporariesOfEndedProcesses) {
  TempDir d;
  const std::string p = d.file("checkpoint.json");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);  // a process id that no longer runs
  const std::string dead = p + ".tmp." + std::to_string(child);
  const std::string alive = p + ".tmp." + std::to_string(getppid());
  const std::string other = d.file("other.json.tmp." + std::to_string(child));
  for (const std::string& f : {dead, alive, other}) write_file_atomic(f, "left over");
  write_file_atomic(p, "new");
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(alive));  // its writer may still rename it
  EXPECT_TRUE(fs::exists(other));  // another file's
  EXPECT_EQ(read_file(p), "new");
}

// SIGTERM or SIGINT during a write: the handler deletes the temporary file and the process ends
// by the signal. Inside a StopScope the signal is only recorded, for the work to stop itself.
TEST(Interrupt, ASignalDeletesTheWriteInProgressOrAsksAScopeToStop) {
  TempDir d;
  const std::string tmp = d.file("model.fgm.tmp.1");
  for (const int sig : {SIGTERM, SIGINT}) {
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      install_stop_handlers();
      const flipguard::detail::TempFileGuard guard(tmp);
      std::FILE* f = std::fopen(tmp.c_str(), "w");
      if (!f || std::fputs("half", f) < 0 || std::fclose(f) != 0) _exit(3);
      raise(sig);
      _exit(4);  // not reached: the signal ends the process
    }
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_FALSE(fs::exists(tmp));
  }
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    install_stop_handlers();
    const StopScope scope;
    if (stop_signal() != 0) _exit(1);
    raise(SIGINT);  // recorded, the process goes on
    if (stop_signal() != SIGINT) _exit(2);
    raise(SIGTERM);  // a second signal ends it
    _exit(8);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_EQ(signal_name(SIGINT), "SIGINT");
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
}

TEST(Io, ReadFileNamesWhatItCouldNotRead) {
  TempDir d;
  EXPECT_TRUE(contains(error_of([&] { read_file(d.str(), "model file"); }), "is a folder"));
  const std::string gone = d.file("gone");
  const std::string msg = error_of([&] { read_file(gone, "model file"); });
  EXPECT_TRUE(contains(msg, "model file")) << msg;
  EXPECT_TRUE(contains(msg, gone)) << msg;
}

// Numbers from text: the whole text or nothing.
TEST(Parse, WholeTextOrNothing) {
  EXPECT_EQ(parse_integer("12"), 12);
  EXPECT_EQ(parse_integer("-3"), -3);
  for (const char* bad : {"", "1.5", "12x", "two", "99999999999999999999"})
    EXPECT_FALSE(parse_integer(bad).has_value()) << bad;
  EXPECT_EQ(parse_number("0.5"), 0.5);
  EXPECT_EQ(parse_number("1e-3"), 1e-3);
  for (const char* bad : {"", "nan", "inf", "1x", "1e999"})
    EXPECT_FALSE(parse_number(bad).has_value()) << bad;
}
