#!/usr/bin/env bash
# Installs the build and run dependencies from Debian's packages, only those that are missing.
# Idempotent: a second run installs nothing. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libopenmpi-dev openmpi-bin libcli11-dev
          nlohmann-json3-dev libspdlog-dev catch2 libopenblas-dev
          libopenblas-openmp-dev  # OpenBLAS threaded by OpenMP, preferred by CMakeLists.txt
          python3-matplotlib)  # scripts/plot.py (and python3 for the CLI tests' JSON checks)
# Extra packages a caller asks for (e.g. the Slurm test): scripts/install-deps.sh slurm-wlm munge
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are missing or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
