# CMC: L and ab of Lab colour space as two views, an encoder and a memory bank for each.
#
#   python -m mi_contrast.main --config=configs/cmc.py --workdir=/tmp/mi_cmc
#
# Runtime: 189 s on a 2-core CPU shared with other work (load 3), compilation included.
# Digits test split: linear 0.983, kNN 0.978, 10-shot 0.925 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""CMC with uniform negatives."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "cmc"
  c.negatives = "uniform"
  c.bound = "infonce"
  c.cmc.width = "full"
  c.bank.momentum = 0.5   # the reference's nce_m (HobbitLong/CMC train_CMC.py)
  # Digits: the grey no-flip views; the Lab encoder false-colours grey input (views.colormap)
  # as the 'digits_cmc' views do, so L and ab both carry the digit.
  c.views = "digits_noflip" if c.dataset == "digits" else "cmc"
  if c.dataset == "digits":
    c.temperature = 0.1         # these two chosen on the validation split, as configs/ring.py
    c.num_epochs = 60
  return c
