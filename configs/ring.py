# IR Ring: IR whose K negatives are drawn from a ring of the memory bank, annealed easy -> hard.
# The ring holds the bank rows ranked [rho_i * rho_o * N, rho_o * N) by similarity to the anchor;
# rho_o goes linearly 1.0 -> 0.1 over the first half of training, rho_i = 0.1 (the reference).
#
#   python -m mi_contrast.main --config=configs/ring.py --workdir=/tmp/mi_ring
#
# Runtime: about 1 minute on a 2-core CPU (embedded digits preset, compilation included).
# Expected result: linear_top1 ~0.97-0.98, nn1_top1 ~0.96-0.98 on the digits test split, the
# raw-pixel probe matched or beaten; band [0.0, 0.9] at the start, [0.9, 0.99] at the end.
# `--config=configs/ring.py:cifar10` (also cifar100, stl10, imagenet2012) uses the reference setup.
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
  return c
