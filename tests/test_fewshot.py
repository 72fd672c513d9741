"""Few-shot linear probes: the fixed draws, the probe against scikit-learn, the result shapes."""

import json

import numpy as np
import pytest

from mi_contrast import probes
from mi_contrast import input_pipeline
from mi_contrast import report

SHOTS = ("1", "5", "10")
NETWORKS = ("trained", "random_init", "raw_pixels")


def _labels(num=600, num_classes=10, seed=0):
  return np.random.RandomState(seed).permutation(np.arange(num) % num_classes)


def _separable(num_train=1000, num_test=1000, dim=32, num_classes=10, spread=2.5, seed=0):
  """Gaussian classes around random means: linearly separable up to their overlap."""
  rng = np.random.RandomState(seed)
  means = rng.randn(num_classes, dim) * spread / np.sqrt(dim) * 2
  def sample(num):
    y = np.arange(num) % num_classes
    return (means[y] + rng.randn(num, dim)).astype(np.float32), y
  return (*sample(num_train), *sample(num_test))


def test_draws_are_fixed_n_per_class_and_differ_between_draws():
  labels = _labels()
  for shots in (1, 5, 10):
    draws = probes.fewshot_indices(labels, shots, 5, seed=0)
    assert len(draws) == 5
    again = probes.fewshot_indices(list(labels), shots, 5, seed=0)
    for a, b in zip(draws, again):
      np.testing.assert_array_equal(a, b)
    for draw, rows in enumerate(draws):
      assert rows.dtype == np.int64 and len(rows) == 10 * shots
      assert len(set(rows.tolist())) == len(rows)  # without replacement
      np.testing.assert_array_equal(np.bincount(labels[rows], minlength=10), [shots] * 10)
      # Class-major, each class's rows as RandomState(seed + 1000 n + draw) chooses them.
      rng = np.random.RandomState(0 + 1000 * shots + draw)
      expected = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                                 for c in range(10)])
      np.testing.assert_array_equal(rows, expected)
    as_sets = [frozenset(rows.tolist()) for rows in draws]
    assert len(set(as_sets)) == 5, "every draw differs"
    other_seed = probes.fewshot_indices(labels, shots, 5, seed=1)
    assert all(frozenset(a.tolist()) != frozenset(b.tolist())
               for a, b in zip(draws, other_seed))
  with pytest.raises(ValueError, match="fewer"):
    probes.fewshot_indices(_labels(num=50), 6, 1)


def test_every_network_is_probed_on_the_same_draws(monkeypatch):
  labels = _labels(num=300)
  test_labels = _labels(num=100, seed=1)
  seen = []
  original = probes.fewshot_indices

  def spy(*args, **kwargs):
    draws = original(*args, **kwargs)
    seen.append([d.copy() for d in draws])
    return draws

  monkeypatch.setattr(probes, "fewshot_indices", spy)
  rng = np.random.RandomState(0)
  networks = [(rng.randn(300, 8), rng.randn(100, 8)),       # a network's features
              (rng.randn(300, 64), rng.randn(100, 64)),     # another one's
              (rng.randint(0, 256, (300, 16, 16, 3)).astype(np.uint8),  # raw pixels
               rng.randint(0, 256, (100, 16, 16, 3)).astype(np.uint8))]
  for train_x, test_x in networks:
    probes.fewshot_probe(train_x, labels, test_x, test_labels, seed=3)
  assert len(seen) == 3 * 3  # one call per n and network
  for first, later in zip(seen[:3], seen[3:6] + seen[6:]):
    assert len(first) == 5
    for a, b in zip(first, later):
      np.testing.assert_array_equal(a, b)
  for rows, expected in zip(seen[0], original(labels, 1, 5, 3)):
    np.testing.assert_array_equal(rows, expected)


def _standardised(train_x, test_x):
  mean, std = probes.feature_statistics(train_x)
  scale = np.where(std > 1e-8 * max(1.0, std.max()), std, 1.0)
  return (train_x - mean) / scale, (test_x - mean) / scale


def _sklearn_fewshot(train_x, train_y, test_x, test_y, *, same_objective):
  """Per n, the mean test accuracy of scikit-learn's LogisticRegression on the same draws
  (imported here: not when the file is collected)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  train_s, test_s = _standardised(train_x, test_x)
  ones = lambda x: np.concatenate([x, np.ones((len(x), 1))], axis=1)
  out = {}
  for n in (1, 5, 10):
    accuracies = []
    for rows in probes.fewshot_indices(train_y, n, 5, seed=0):
      if same_objective:  # the probe's objective: a penalised bias, C = 1 / (wd * rows)
        model = LogisticRegression(C=1.0 / (probes.FEWSHOT_WEIGHT_DECAY * len(rows)),
                                   fit_intercept=False, max_iter=10000, tol=1e-6)
        accuracies.append(model.fit(ones(train_s[rows]), train_y[rows])
                          .score(ones(test_s), test_y))
      else:  # scikit-learn's defaults (C = 1, unpenalised intercept)
        model = LogisticRegression(max_iter=10000)
        accuracies.append(model.fit(train_s[rows], train_y[rows]).score(test_s, test_y))
    out[str(n)] = float(np.mean(accuracies))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("source", ["separable", "digits"])
def test_fewshot_probe_agrees_with_sklearn_logistic_regression(source):
  if source == "separable":
    train_x, train_y, test_x, test_y = _separable()
  else:
    data = input_pipeline.load_digits(split_seed=0, test_fraction=0.2)
    flat = lambda x: x.reshape(len(x), -1)
    train_x, train_y = flat(data.train_images), data.train_labels
    test_x, test_y = flat(data.test_images), data.test_labels
  ours = probes.fewshot_probe(train_x, train_y, test_x, test_y)
  same = _sklearn_fewshot(train_x, train_y, test_x, test_y, same_objective=True)
  default = _sklearn_fewshot(train_x, train_y, test_x, test_y, same_objective=False)
  for n in SHOTS:
    assert abs(ours[n]["mean"] - same[n]) <= 0.005, (n, ours, same)      # the same optimum
    assert abs(ours[n]["mean"] - default[n]) <= 0.05, (n, ours, default)  # another C, bias
  assert ours["1"]["mean"] < ours["10"]["mean"]
  if source == "separable":
    assert ours["10"]["mean"] > 0.8


def test_fewshot_probe_and_table_shapes():
  train_x, train_y, test_x, test_y = _separable(num_train=300, num_test=200, dim=16)
  probe = probes.fewshot_probe(train_x, train_y, test_x, test_y)
  assert list(probe) == list(SHOTS)
  for n in SHOTS:
    assert set(probe[n]) == {"mean", "std"}
    assert all(type(v) is float for v in probe[n].values())
    assert 0.0 <= probe[n]["mean"] <= 1.0 and 0.0 <= probe[n]["std"] <= 0.5
  again = probes.fewshot_probe(train_x, train_y, test_x, test_y)
  assert again == probe  # deterministic
  other = probes.fewshot_probe(train_x[:, ::-1] * 2 + 1, train_y, test_x[:, ::-1] * 2 + 1,
                                 test_y)  # standardised: the same features, reordered
  for n in SHOTS:
    assert other[n]["mean"] == pytest.approx(probe[n]["mean"], abs=2 / len(test_y))
  one_draw = probes.fewshot_probe(train_x, train_y, test_x, test_y, shots=(2,), num_draws=1)
  assert list(one_draw) == ["2"] and one_draw["2"]["std"] == 0.0

  table = probes.fewshot_table({"trained": probe, "random_init": other, "raw_pixels": probe})
  assert list(table) == list(SHOTS)
  for n in SHOTS:
    assert list(table[n]) == list(NETWORKS)
    assert table[n]["random_init"] == other[n]
  assert json.loads(json.dumps(table)) == table
  assert list(probes.fewshot_table({"trained": probe, "raw_pixels": None})["5"]) == ["trained"]
  with pytest.raises(ValueError, match="weight_decay"):
    probes.fewshot_probe(train_x, train_y, test_x, test_y, weight_decay=0.0)


def test_report_shows_the_fewshot_table(tmp_path):
  fewshot = {n: {name: {"mean": 0.1 * (i + 1) + 0.01 * j, "std": 0.0123}
                 for j, name in enumerate(NETWORKS)} for i, n in enumerate(("10", "1", "5"))}
  results = {"method": "ir", "dataset": "digits", "knn_top1": 0.9123,
             "raw_pixels_knn_top1": 0.8765, "fewshot": fewshot}
  (tmp_path / "results.json").write_text(json.dumps(results))
  (tmp_path / "evaluation.json").write_text(json.dumps(
      {"knn_top1": 0.9, "raw_pixels_knn_top1": 0.8642, "fewshot": fewshot,
       "checkpoint_step": 3}))
  report.write_report(str(tmp_path))
  text = (tmp_path / "report.md").read_text(encoding="utf-8")
  rows = [line for line in text.splitlines() if "kNN top-1" in line]
  assert rows[0].startswith("| kNN top-1 (weighted) |") and "0.8765" in rows[1]
  assert "| raw_pixels_knn_top1 | 0.8642" in text
  header = "| images per class | trained | untrained | raw pixels |"
  assert text.count(header) == 2
  table = text.splitlines()[text.splitlines().index(header):][2:5]
  assert [row.split("|")[1].strip() for row in table] == ["1", "5", "10"]
  assert table[0] == "| 1 | 0.2000 ± 0.0123 | 0.2100 ± 0.0123 | 0.2200 ± 0.0123 |"
  assert "| 10 | 0.1000 ± 0.0123 |" in table[2]
