#pragma once
/// \file
/// The processes of a distributed run: `mpirun -n K flipguard ...` (Open MPI). A process that
/// was not launched by mpirun is a group of one and never touches MPI, so the program runs the
/// same with and without it. Collective calls must be made by every process of the group in the
/// same order.
#include <cstdint>
#include <vector>

namespace flipguard {

/// Joins the MPI job when the environment says that mpirun (or another MPI launcher) started this
/// process; otherwise the group is this process alone. Throws Error when launched by mpirun with
/// several processes but built without MPI. Call once, before any other function here.
void dist_init(int* argc, char*** argv);
/// Leaves the MPI job (a no-op for a group of one). Called at normal exit.
void dist_finalize();
/// Ends every process of the job with `code` (after an error in one of them, which the others
/// would otherwise wait for forever); in a group of one, std::exit(code).
[[noreturn]] void dist_abort(int code);

/// This process's index in the group, 0 .. dist_size() - 1.
int dist_rank();
/// Processes in the group.
int dist_size();
/// Processes of the group on this machine (for the default thread count).
int dist_local_size();

/// Element-wise maximum over the group; every process receives the result.
void dist_max(std::vector<int64_t>& values);
/// Element-wise sum over the group; every process receives the result.
void dist_sum(std::vector<int64_t>& values);
/// Maximum of one value over the group.
double dist_max(double value);
/// Waits until every process of the group has reached it.
void dist_barrier();

}  // namespace flipguard
