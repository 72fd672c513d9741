"""The evaluation command: python -m mi_contrast.evaluate --workdir=<run>

It evaluates a run's newest checkpoint (mi_contrast.evaluation_cli, which the command runs).
The probes themselves (feature extraction, weighted kNN and 1-NN, the linear and few-shot
probes) live in mi_contrast.probes; their names are importable from here too, as in earlier
versions.
"""

from mi_contrast.probes import (  # noqa: F401  (the library's names, re-exported)
    FEWSHOT_DRAWS, FEWSHOT_MAX_STEPS, FEWSHOT_SHOTS, FEWSHOT_WEIGHT_DECAY, extract_features,
    extract_features_stream, feature_statistics, fewshot_indices, fewshot_probe, fewshot_table,
    knn_accuracy, linear_probe, normalize)

__all__ = ["FEWSHOT_DRAWS", "FEWSHOT_MAX_STEPS", "FEWSHOT_SHOTS", "FEWSHOT_WEIGHT_DECAY",
           "extract_features", "extract_features_stream", "feature_statistics",
           "fewshot_indices", "fewshot_probe", "fewshot_table", "knn_accuracy", "linear_probe",
           "normalize"]


if __name__ == "__main__":
  from mi_contrast import evaluation_cli
  evaluation_cli.run()
