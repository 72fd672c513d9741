# LA: local aggregation (k-means close neighbours among background neighbours), IR warm start.
#
#   python -m mi_contrast.main --config=configs/la.py --workdir=/tmp/mi_la
#
# Runtime: 118 s on a 2-core CPU shared with other work (load 4), compilation included.
# Digits test split: linear 0.994, kNN 0.989, 10-shot 0.948 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""LA with an IR warm start."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "la"
  c.negatives = "uniform"   # the IR warm-up's negatives
  c.bound = "infonce"
  c.bank.momentum = 0.5     # the reference LA's bank momentum
  if c.dataset == "digits":
    c.views = "digits_noflip"   # a mirrored digit is another symbol
    c.temperature = 0.1         # these two chosen on the validation split, as configs/ring.py
    c.num_epochs = 60
  return c
