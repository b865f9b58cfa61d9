#!/usr/bin/env bash
# Makes the carried Debian packages (.debs, from ../shared/device/fetch-debs.sh) usable on the
# lent GPU machine, whose image has CUDA and PyTorch but no OpenMPI, OpenBLAS or spdlog.
#
# Why not `dpkg -x pkg.deb /`: a few of the packages hold files under ./lib, and dpkg -x
# replaces the image's merged-/usr symlink /lib -> usr/lib with a real directory (checked on a
# scratch root). So everything is unpacked into /opt/deps, ./lib is folded into ./usr/lib, and
# the tree is merged into / without overwriting anything the image already has (its libgfortran,
# for one, is newer than Debian 12's). /usr/bin/mpirun is an alternatives link that dpkg -x does
# not create; it is made here unless the image has its own. So is libopenblas.so.0 in the
# library directory: binaries built here look for OpenBLAS first in the RUNPATH directory of the
# build they linked (openblas-openmp/ when libopenblas-openmp-dev is installed), which the
# carried packages may not have; the loader then falls back to that link, to whichever build was
# carried (the interface is the same).
#
#   source scripts/gpu/unpack-deps.sh [DEBS_DIR]     # default .debs
set -u
debs=${1:-.debs}
root=${RINGATTN_DEPS_ROOT:-}   # a scratch root for testing this script; empty means /
deps=$root/opt/deps
mkdir -p "$deps"
for f in "$debs"/*.deb; do dpkg -x "$f" "$deps"; done
if [ -d "$deps/lib" ]; then
  mkdir -p "$deps/usr/lib"
  cp -an "$deps/lib/." "$deps/usr/lib/"
fi
mkdir -p "$root/usr" "$root/etc"
cp -an "$deps/usr/." "$root/usr/"
[ -d "$deps/etc" ] && cp -an "$deps/etc/." "$root/etc/"
[ -e "$root/usr/bin/mpirun" ] || ln -s mpirun.openmpi "$root/usr/bin/mpirun"
libdir=$root/usr/lib/x86_64-linux-gnu
if [ ! -e "$libdir/libopenblas.so.0" ]; then
  for variant in openblas-openmp openblas-pthread; do
    if [ -e "$libdir/$variant/libopenblas.so.0" ]; then
      ln -s "$variant/libopenblas.so.0" "$libdir/libopenblas.so.0"
      break
    fi
  done
fi
[ -z "$root" ] && ldconfig
true
