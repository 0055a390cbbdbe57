"""The data layer: every dataset the jobs and tests use, loaded one way.

* :mod:`~hug_plugins.data.tabular` -- scikit-learn's embedded digits as flat vectors (nothing to
  download) and Gaussian blobs for unit tests.
* :mod:`~hug_plugins.data.images` -- digits, MNIST, Fashion-MNIST, CIFAR-10/100 and ImageFolder
  trees decoded once into in-memory uint8 tensors.
* :mod:`~hug_plugins.data.pixels` -- the same sources as float ``[0, 1]`` tensors (robustness,
  long-tail).
* :mod:`~hug_plugins.data.sampling` -- class-stratified subsets and validation hold-outs.
* :mod:`~hug_plugins.data.augment` -- batched CIFAR augmentation (crop + flip).

Example:
    >>> from hug_plugins.data import load_image_dataset, load_pixel_datasets
    >>> load_image_dataset("digits")[2].num_classes, load_pixel_datasets("digits")[2].input_shape
    (10, (64,))
"""

from hug_plugins.data.augment import BatchAugment
from hug_plugins.data.images import (
    DATASETS,
    DatasetInfo,
    ImageTensorDataset,
    channel_stats,
    clear_cache,
    decode_dataset,
    extraction_cache_dir,
    load_image_dataset,
)
from hug_plugins.data.pixels import PIXEL_DATASETS, PixelDatasetInfo, load_pixel_datasets
from hug_plugins.data.sampling import (
    load_with_subsets,
    split_holdout,
    stratified_indices,
    subset,
    take,
)
from hug_plugins.data.tabular import (
    DIGITS_NUM_CLASSES,
    DIGITS_NUM_FEATURES,
    load_digits_arrays,
    load_digits_split,
    make_blobs_dataset,
)

__all__ = [
    "DATASETS",
    "DIGITS_NUM_CLASSES",
    "DIGITS_NUM_FEATURES",
    "PIXEL_DATASETS",
    "BatchAugment",
    "DatasetInfo",
    "ImageTensorDataset",
    "PixelDatasetInfo",
    "channel_stats",
    "clear_cache",
    "decode_dataset",
    "extraction_cache_dir",
    "load_digits_arrays",
    "load_digits_split",
    "load_image_dataset",
    "load_pixel_datasets",
    "load_with_subsets",
    "make_blobs_dataset",
    "split_holdout",
    "stratified_indices",
    "subset",
    "take",
]
