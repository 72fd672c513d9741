"""config.eval_split = 'validation': probes on images carved from the training split only."""

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline


def _rows(images):
  return {bytes(np.ascontiguousarray(x)) for x in images}


def test_validation_split_is_carved_from_training_images_only():
  config = config_lib.default_config()
  full = input_pipeline.load_dataset(config)
  config.eval_split = "validation"
  config_lib.validate(config, num_devices=1)
  data = input_pipeline.load_dataset(config)
  held = int(round(config.validation_fraction * full.num_train))
  assert (data.num_test, data.num_train) == (held, full.num_train - held)
  train, validation, test = (_rows(x) for x in (data.train_images, data.test_images,
                                                full.test_images))
  # Together they are exactly the original training images; none is a test image.
  assert _rows(full.train_images) == train | validation and not train & validation
  assert not validation & test and not train & test
  # The labels travel with their images, and the split is fixed by split_seed.
  lookup = {bytes(np.ascontiguousarray(x)): y
            for x, y in zip(full.train_images, full.train_labels)}
  assert [lookup[bytes(np.ascontiguousarray(x))] for x in data.test_images] == list(
      data.test_labels)
  again = input_pipeline.load_dataset(config)
  np.testing.assert_array_equal(again.test_images, data.test_images)
  config.split_seed = 1
  other = input_pipeline.load_dataset(config)
  assert _rows(other.test_images) != validation


def test_validation_split_errors_name_the_field():
  config = config_lib.default_config()
  config.eval_split = "val"
  with pytest.raises(ValueError, match="eval_split"):
    config_lib.validate(config, num_devices=1)
  streamed = config_lib.default_config("imagenet2012")
  streamed.eval_split = "validation"
  with pytest.raises(ValueError, match="eval_split.*imagenet2012"):
    config_lib.validate(streamed, num_devices=1)
  config.eval_split, config.validation_fraction = "validation", 1.0
  with pytest.raises(ValueError, match="validation_fraction"):
    config_lib.validate(config, num_devices=1)
  data = input_pipeline.load_dataset(config_lib.default_config())
  with pytest.raises(ValueError, match="validation_fraction"):
    input_pipeline.validation_split(data, 1e-6, 0)
