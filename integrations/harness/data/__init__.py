"""The data layer: every dataset the jobs and tests use, loaded one way.

* :mod:`~harness.data.tabular` -- scikit-learn's embedded digits as flat vectors (nothing to
  download) and Gaussian blobs for unit tests.
* :mod:`~harness.data.images` -- digits, MNIST, Fashion-MNIST, CIFAR-10/100 and ImageFolder
  trees decoded once into in-memory uint8 tensors.
* :mod:`~harness.data.pixels` -- the same sources as float ``[0, 1]`` tensors (robustness,
  long-tail).
* :mod:`~harness.data.sampling` -- class-stratified subsets and validation hold-outs.
* :mod:`~harness.data.augment` -- batched CIFAR augmentation (crop + flip).

Example:
    >>> from harness.data import load_image_dataset, load_pixel_datasets
    >>> load_image_dataset("digits")[2].num_classes, load_pixel_datasets("digits")[2].input_shape
    (10, (64,))
"""

from harness.data.augment import BatchAugment
from harness.data.images import (
    DATASETS,
    DatasetInfo,
    ImageTensorDataset,
    channel_stats,
    clear_cache,
    decode_dataset,
    extraction_cache_dir,
    load_image_dataset,
)
from harness.data.pixels import PIXEL_DATASETS, PixelDatasetInfo, load_pixel_datasets
from harness.data.sampling import (
    load_with_subsets,
    split_holdout,
    stratified_indices,
    subset,
    take,
)
from harness.data.tabular import (
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
