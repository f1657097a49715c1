#include <flipguard/distributed.hpp>
#include <flipguard/error.hpp>

#include <cstdlib>
#include <string>

#ifdef FLIPGUARD_WITH_MPI
#include <mpi.h>
#endif

namespace flipguard {

namespace {

int g_rank = 0, g_size = 1, g_local_size = 1;
bool g_mpi = false;  // MPI_Init was called

/// An integer from the first of the environment variables that is set, or 0.
int env_int(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const char* v = std::getenv(n)) return std::atoi(v);
  return 0;
}

}  // namespace

void dist_init(int* argc, char*** argv) {
  // Open MPI, then the PMI/PMIx variables that other launchers (MPICH, Slurm) set.
  const int launched = env_int({"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"});
  if (launched < 1) return;
#ifdef FLIPGUARD_WITH_MPI
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  g_mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &g_local_size);
  MPI_Comm_free(&local);
#else
  (void)argc;
  (void)argv;
  if (launched > 1)
    fail("started by an MPI launcher with ", launched,
         " processes, but this flipguard was built without MPI: rebuild with Open MPI "
         "(libopenmpi-dev) installed, or run one process");
#endif
}

void dist_finalize() {
#ifdef FLIPGUARD_WITH_MPI
  if (g_mpi) MPI_Finalize();
#endif
  g_mpi = false;
}

void dist_abort(int code) {
#ifdef FLIPGUARD_WITH_MPI
  if (g_mpi && g_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  dist_finalize();
  std::exit(code);
}

int dist_rank() { return g_rank; }
int dist_size() { return g_size; }
int dist_local_size() { return g_local_size; }

#ifdef FLIPGUARD_WITH_MPI
namespace {
void allreduce(std::vector<int64_t>& values, MPI_Op op) {
  if (g_size > 1)
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, op,
                  MPI_COMM_WORLD);
}
}  // namespace
void dist_max(std::vector<int64_t>& values) { allreduce(values, MPI_MAX); }
void dist_sum(std::vector<int64_t>& values) { allreduce(values, MPI_SUM); }
#else
void dist_max(std::vector<int64_t>&) {}
void dist_sum(std::vector<int64_t>&) {}
#endif

double dist_max(double value) {
#ifdef FLIPGUARD_WITH_MPI
  if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
#endif
  return value;
}

void dist_barrier() {
#ifdef FLIPGUARD_WITH_MPI
  if (g_size > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

}  // namespace flipguard
