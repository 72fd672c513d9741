"""mi_contrast: contrastive visual representation learning as mutual-information estimation.

The light public API, importable without TensorFlow or the trainer:
  mi_contrast.bounds     MI lower bounds on critic scores (InfoNCE, masked/ring InfoNCE, NCE,
                         NWJ, DV, TUBA, JS, interpolated InfoNCE), per example, in nats.
  mi_contrast.negatives  ring / ball masks and band selection of hard negatives.
  mi_contrast.schedules  annealing schedules (constant, linear, step, exponential, cosine,
                         adaptive).
  mi_contrast.views      augmentation ops and view recipes, pure JAX, per image.
The trainer (`mi_contrast.train`, `python -m mi_contrast.main`) is imported on demand.
"""

from mi_contrast import bounds
from mi_contrast import negatives
from mi_contrast import schedules
from mi_contrast import views

__version__ = "0.1.0"
__all__ = ["bounds", "negatives", "schedules", "views"]
