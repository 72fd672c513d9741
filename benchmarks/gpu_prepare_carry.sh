#!/usr/bin/env bash
# Prepares, on a machine with the network, what benchmarks/gpu_suite.sh needs on a GPU machine
# that has none: the pure-Python wheels its image lacks, and the four Fashion-MNIST IDX files.
#
#   bash benchmarks/gpu_prepare_carry.sh [--dest .whl] [--fashion_mnist /usr/share/datasets/fashion-mnist]
#
# Writes into DEST (default .whl/, which .gitignore ignores, so it travels only when a device
# call names it in `carry`):
#   DEST/*.whl             ml-collections (py3-none-any, for Python 3.12): the one package the
#                          project imports that the GPU image lacks. Its needs, absl-py and
#                          PyYAML, are in the image. clu is not carried (its metric writers
#                          import TensorFlow, which the image lacks, and the trainer then writes
#                          metrics.jsonl only); tensorflow-datasets is not carried (Fashion-MNIST
#                          is read from its IDX files, never through tfds).
#   DEST/fashion-mnist/    copies of the four original IDX files (.gz), about 30 MiB.
# Prints the total size: everything that travels (working tree + DEST) must stay under 64 MiB.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.whl"
FASHION="/usr/share/datasets/fashion-mnist"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dest) DEST="$2"; shift 2 ;;
    --dest=*) DEST="${1#*=}"; shift ;;
    --fashion_mnist) FASHION="$2"; shift 2 ;;
    --fashion_mnist=*) FASHION="${1#*=}"; shift ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# name==version: the versions tested here (setup.py's comment).
WHEELS=("ml-collections==1.1.0")

mkdir -p "$DEST/fashion-mnist"
for wheel in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation py --abi none --platform any -d "$DEST" "$wheel"
done
for name in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
            t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [[ ! -f "$FASHION/$name" ]]; then
    echo "missing $FASHION/$name (apt-get install dataset-fashion-mnist, or --fashion_mnist DIR)" >&2
    exit 1
  fi
  cp -p "$FASHION/$name" "$DEST/fashion-mnist/$name"
done

echo "carry folder $DEST:"
ls -la "$DEST" "$DEST/fashion-mnist"
carry_kib=$(du -sk "$DEST" | cut -f1)
tree_kib=$(cd "$REPO" && { git ls-files -z --cached --others --exclude-standard \
                            | xargs -0 -r du -ck 2>/dev/null | tail -1 | cut -f1; } || echo 0)
total_kib=$((carry_kib + tree_kib))
echo "size: carry ${carry_kib} KiB + working tree ${tree_kib} KiB = ${total_kib} KiB" \
     "(limit 65536 KiB)"
if (( total_kib >= 65536 )); then
  echo "over the 64 MiB that a device call carries" >&2
  exit 1
fi
