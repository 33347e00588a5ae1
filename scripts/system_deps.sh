#!/usr/bin/env bash
# Debian packages the tests and benchmarks use, installed only when missing (quietly):
# Fashion-MNIST (dataset-fashion-mnist; or set HADMC_FASHION_MNIST_DIR to a folder holding
# its four IDX files), zstd, xdelta3 and bsdiff, which bench/delta.py compares against, and
# promtool (package prometheus), which checks the service's /metrics.
set -euo pipefail

need=()
fmnist="${HADMC_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
for f in train-images-idx3 train-labels-idx1 t10k-images-idx3 t10k-labels-idx1; do
  [ -f "$fmnist/$f-ubyte.gz" ] || { need+=(dataset-fashion-mnist); break; }
done
for tool in zstd xdelta3 bsdiff; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# Chromium, which the dashboard's browser test drives (tests/cloud_service/test_ui.py).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

apt_get() {
  if [ "$EUID" -eq 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get "$@"
  else sudo DEBIAN_FRONTEND=noninteractive apt-get "$@"; fi
}
echo "installing ${need[*]} (apt-get)"
if ! { apt_get update -qq && apt_get install -y -qq "${need[@]}" >/dev/null; }; then
  echo "error: could not install ${need[*]}; run 'sudo apt-get install ${need[*]}'" \
       "and try again" >&2
  exit 1
fi
