# CMC Ring: CMC whose negatives in each direction come from the other bank's ring.
#
#   python -m mi_contrast.main --config=configs/cmc_ring.py --workdir=/tmp/mi_cmc_ring
#
# Runtime: 150 s on a 2-core CPU shared with other work (load 3), compilation included.
# Digits test split: linear 0.978, kNN 0.975, 10-shot 0.907 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""CMC Ring with linear annealing of the outer fraction."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "cmc"
  c.negatives = "ring"
  c.bound = "infonce"
  c.cmc.width = "full"
  c.bank.momentum = 0.5   # the reference's nce_m (HobbitLong/CMC train_CMC.py)
  # Digits: the grey no-flip views; the Lab encoder false-colours grey input (views.colormap)
  # as the 'digits_cmc' views do, so L and ab both carry the digit.
  c.views = "digits_noflip" if c.dataset == "digits" else "cmc"
  c.ring.schedule = "linear"
  c.ring.outer_start = 1.0
  c.ring.outer = 0.1
  c.ring.inner = 0.1
  return c
