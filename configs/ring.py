# IR Ring: IR whose K negatives come from a ring of the memory bank, annealed easy -> hard.
#
#   python -m mi_contrast.main --config=configs/ring.py --workdir=/tmp/mi_ring
#   python -m mi_contrast.main --config=configs/ring.py:fashion_mnist --workdir=/tmp/mi_ring_fm
#
# Runtime on a 2-core CPU: digits 82-164 s (compilation included), Fashion-MNIST 36 minutes.
# Test linear_top1 (3 seeds): digits ~0.99 (raw pixels 0.967), Fashion-MNIST 0.850 (0.844).
# Results: docs/results/digits.md and docs/results/fashion_mnist.md.
"""IR Ring with linear annealing of the outer fraction."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "ir"
  c.negatives = "ring"
  c.bound = "infonce"
  c.ring.schedule = "linear"
  c.ring.outer_start = 1.0
  c.ring.outer = 0.1
  c.ring.inner = 0.1
  if c.dataset == "digits":
    c.views = "digits_noflip"
    c.temperature = 0.1
    c.num_epochs = 60
  if c.dataset == "fashion_mnist":
    c.bank.candidates = config.FASHION_MNIST_CANDIDATES  # the band over 8,192 random rows
  return c
