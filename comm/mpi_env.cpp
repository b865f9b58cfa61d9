#include "comm/mpi_env.h"

#include <cstdlib>
#include <string>

#include "comm/mpi_check.h"
#include "core/log.h"

namespace ringattn {

namespace {
int g_rank = 0, g_size = 1, g_local_rank = 0, g_local_size = 1;
bool g_thread_multiple = false;
}  // namespace

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, size_t(len));
}

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  g_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_size));
  MPI_Comm node;
  MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &g_local_rank));
  MPI_CHECK(MPI_Comm_size(node, &g_local_size));
  MPI_Comm_free(&node);
  log::init(g_rank, g_size);
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int MpiEnv::world_rank() {
  return g_rank;
}
int MpiEnv::world_size() {
  return g_size;
}
int MpiEnv::local_rank() {
  return g_local_rank;
}
int MpiEnv::local_size() {
  return g_local_size;
}
bool MpiEnv::thread_multiple() {
  return g_thread_multiple;
}

void MpiEnv::abort(int code) {
  spdlog::default_logger()->flush();
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace ringattn
