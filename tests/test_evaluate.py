"""Evaluation protocols against independent implementations.

scikit-learn is imported by the tests that use it, not when the file is collected (it costs
every test process about a second).
"""

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import probes
from mi_contrast import input_pipeline


def _digits_features():
  data = input_pipeline.load_digits(split_seed=0, test_fraction=0.2)
  flat = lambda x: x.reshape(len(x), -1)
  return flat(data.train_images), data.train_labels, flat(data.test_images), data.test_labels


@pytest.mark.slow
def test_linear_probe_agrees_with_sklearn_logistic_regression():
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  train_x, train_y, test_x, test_y = _digits_features()
  c = config_lib.default_config()
  ours = probes.linear_probe(train_x, train_y, test_x, test_y, num_classes=10,
                               epochs=c.probe_epochs, learning_rate=c.probe_learning_rate,
                               weight_decay=c.probe_weight_decay, batch_size=c.probe_batch_size)
  scaler = StandardScaler().fit(train_x)
  reference = LogisticRegression(max_iter=5000).fit(scaler.transform(train_x), train_y)
  sk = reference.score(scaler.transform(test_x), test_y)
  assert abs(ours["top1"] - sk) <= 0.01, (ours, sk)
  assert ours["top5"] >= ours["top1"]


def test_nearest_neighbour_agrees_with_sklearn():
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=import-outside-toplevel
  train_x, train_y, test_x, test_y = _digits_features()
  train_f, test_f = probes.normalize(train_x), probes.normalize(test_x)
  _, nn1 = probes.knn_accuracy(train_f, train_y, test_f, test_y, k=5, temperature=0.07,
                                 num_classes=10)
  sk = KNeighborsClassifier(1, metric="cosine").fit(train_f, train_y).score(test_f, test_y)
  assert abs(nn1 - sk) < 1e-9


def test_weighted_knn_matches_a_direct_numpy_vote():
  rng = np.random.RandomState(0)
  train = probes.normalize(rng.randn(200, 8))
  test = probes.normalize(rng.randn(50, 8))
  train_y, test_y = rng.randint(0, 3, 200), rng.randint(0, 3, 50)
  knn, _ = probes.knn_accuracy(train, train_y, test, test_y, k=7, temperature=0.1,
                                 num_classes=3)
  sims = test @ train.T
  top = np.argsort(-sims, axis=1)[:, :7]
  votes = np.zeros((50, 3))
  for i in range(50):
    for j in top[i]:
      votes[i, train_y[j]] += np.exp(sims[i, j] / 0.1)
  assert abs(knn - np.mean(votes.argmax(1) == test_y)) < 1e-9
