# Sourced by the project's scripts: the environment every ringattn run on this kind of machine
# needs. mpirun refuses root unless told; ranks on a shared machine must not oversubscribe BLAS.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Quiet OpenMPI's "no high-performance network found" notices on single machines.
export OMPI_MCA_btl_base_warn_component_unused=0
# Do not pin ranks to cores: the bench and tests size their thread pools themselves.
export OMPI_MCA_hwloc_base_binding_policy=none
RINGATTN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RINGATTN_ROOT
RINGATTN_BUILD=${RINGATTN_BUILD:-$RINGATTN_ROOT/build}
export RINGATTN_BUILD

# Configures (once) and builds the project into $RINGATTN_BUILD.
ringattn_build() {
  local jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  if [ ! -f "$RINGATTN_BUILD/build.ninja" ] && [ ! -f "$RINGATTN_BUILD/Makefile" ]; then
    cmake -S "$RINGATTN_ROOT" -B "$RINGATTN_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      ${RINGATTN_CMAKE_ARGS:-}
  fi
  cmake --build "$RINGATTN_BUILD" -j "$jobs"
}
