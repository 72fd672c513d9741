# SimCLR Ring: SimCLR whose negatives are each anchor's ring of the in-batch similarities;
# rho_o anneals linearly 1.0 -> 0.5 over the first half of training, rho_i = 0.1 (the
# reference SimCLR ring: rho_o = 0.5, rho_i = 0.1).
#
#   python -m mi_contrast.main --config=configs/simclr_ring.py --workdir=/tmp/mi_simclr_ring
#
# Runtime: about 70 s on a 2-core CPU (embedded digits preset, compilation included).
# Expected result (digits test split): see the README method table (kNN ~0.97, linear ~0.975).
# `--config=configs/simclr_ring.py:cifar10` (also cifar100, stl10, imagenet2012) as SimCLR.
"""SimCLR Ring with linear annealing of the outer fraction."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "simclr"
  c.negatives = "ring"
  c.bound = "infonce"
  c.ring.schedule = "linear"
  c.ring.outer_start = 1.0
  c.ring.outer = 0.5
  c.ring.inner = 0.1
  if c.dataset != "digits":
    # Grey Fashion-MNIST keeps its preset's views (no colour jitter on one channel).
    c.views = c.views if c.dataset == "fashion_mnist" else "simclr"
  return c
