#include <flipguard/parallel.hpp>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace flipguard {

namespace {

/// The first exception any worker threw, and how many are still running.
struct Outcome {
  std::mutex m;
  std::condition_variable cv;
  std::exception_ptr error;
  int running = 0;

  void run(const std::function<void(int)>& task, int w) {
    try {
      task(w);
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      if (!error) error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(m);
    --running;
    cv.notify_all();
  }
};

}  // namespace

void parallel_for(int workers, const std::function<void(int)>& task) {
  workers = std::max(1, workers);
  Outcome out;
  out.running = workers;
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) pool.emplace_back([&, w] { out.run(task, w); });
  out.run(task, 0);
  for (auto& t : pool) t.join();
  if (out.error) std::rethrow_exception(out.error);
}

void parallel_for(int workers, const std::function<void(int)>& task,
                  std::chrono::milliseconds period, const std::function<void()>& tick) {
  workers = std::max(1, workers);
  Outcome out;
  out.running = workers;
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (int w = 0; w < workers; ++w) pool.emplace_back([&, w] { out.run(task, w); });
  std::exception_ptr tick_error;
  {
    std::unique_lock<std::mutex> lock(out.m);
    while (out.running > 0) {
      out.cv.wait_for(lock, period);
      if (out.error || tick_error || out.running == 0) continue;
      lock.unlock();
      try {
        tick();
      } catch (...) {
        tick_error = std::current_exception();
      }
      lock.lock();
    }
  }
  for (auto& t : pool) t.join();
  if (out.error) std::rethrow_exception(out.error);
  if (tick_error) std::rethrow_exception(tick_error);
}

}  // namespace flipguard
