# LA: local aggregation. Background neighbours B_i = the config.la.background nearest bank
# rows, close neighbours C_i = rows sharing a k-means cluster with i in any of
# config.la.num_clusterings clusterings (refit on the bank once per epoch); the objective is
# log( sum_{B and C} e^s / sum_B e^s ) (+ log(K + 1), InfoNCE's scale). The first
# config.la.warmup_epochs epochs train IR. bound_nats is InfoNCE of the same scores.
#
#   python -m mi_contrast.main --config=configs/la.py --workdir=/tmp/mi_la
#
# Runtime: under 3 minutes on a 2-core CPU (embedded digits preset, compilation included).
# Measured on digits: kNN 0.961, linear 0.981, bound 1.88 / cap 5.55 nats (README method table).
# `--config=configs/la.py:cifar10` (also cifar100, stl10, imagenet2012): 4096 background
# neighbours, 10 clusterings, 10 IR warm-up epochs (30000 clusters for imagenet2012).
"""LA with an IR warm start."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "la"
  c.negatives = "uniform"   # the IR warm-up's negatives
  c.bound = "infonce"
  c.bank.momentum = 0.5     # the reference LA's bank momentum
  return c
