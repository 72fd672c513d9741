# IR Ring with neighbour views: the ring's inner ball as extra positives.
#
#   python -m mi_contrast.main --config=configs/ring_neighbours.py --workdir=/tmp/mi_ring_nv
#
# Runtime: 121 s on a 2-core CPU shared with other work (load 4), compilation included.
# Digits test split: linear 0.981, kNN 0.975, 10-shot 0.913 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""IR Ring with neighbour views."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "ir"
  c.negatives = "ring"
  c.bound = "infonce"
  c.ir.neighbour_views = True
  c.ir.neighbour_views_warmup_epochs = c.num_epochs // 2  # IR Ring until the annealing ends
  c.ring.schedule = "linear"
  c.ring.outer_start = 1.0
  c.ring.outer = 0.1
  c.ring.inner = 0.1
  if c.dataset == "digits":
    c.views = "digits_noflip"   # a mirrored digit is another symbol
  return c
