# IR Ball: IR whose K negatives come from the ball of the bank, rho_o annealed 1.0 -> 0.1.
#
#   python -m mi_contrast.main --config=configs/ball.py --workdir=/tmp/mi_ball
#
# Runtime: 112 s on a 2-core CPU shared with other work (load 4), compilation included.
# Digits test split: linear 0.978, kNN 0.950, 10-shot 0.885 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""IR Ball with linear annealing of the outer fraction."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "ir"
  c.negatives = "ball"
  c.bound = "infonce"
  c.ring.schedule = "linear"
  c.ring.outer_start = 1.0
  c.ring.outer = 0.1
  if c.dataset == "fashion_mnist":
    c.bank.candidates = config.FASHION_MNIST_CANDIDATES  # the band over 8,192 random rows
  if c.dataset == "digits":
    c.views = "digits_noflip"   # a mirrored digit is another symbol
  return c
