"""Datasets for long-horizon hypergradient experiments, held whole on device.

Hypergradients are computed through a ``lax.scan`` unroll of thousands of
inner training steps, so the whole training set is put on the device once and
every minibatch is chosen *inside* the jitted step from the step index
(:func:`batch_indices`, :func:`get_batch`). Loading happens on the host into a
:class:`Dataset` of numpy arrays.

Sources, in the order they are tried for each name:

* ``'mnist1d'``: generated locally by the ``mnist1d`` package (never its
  download path); 4000 train / 1000 test signals of length 40, 10 classes.
  ``'mnist1d_large'``: the same generator, 20,000 / 5,000 signals.
  Stored as ``(N, 40, 1)`` (length, channel), so 1-D convolutions apply
  directly and MLPs flatten it.
* ``'digits'``: scikit-learn's bundled 8x8 digits (1797 images); a fixed 20%
  (360 images) is the test set, the same on every machine.
* ``'fashion_mnist'``: IDX files in ``data_dir`` if it holds them, else (with no
  ``data_dir``) Debian's ``dataset-fashion-mnist`` folder
  ``/usr/share/datasets/fashion-mnist``, else tensorflow-datasets.
* ``'mnist'``: IDX files in ``data_dir`` if it holds them, else
  tensorflow-datasets.
* ``'svhn_cropped'`` (alias ``'svhn'``) and ``'cifar10'``: tensorflow-datasets.

tensorflow-datasets is read through its random-access path
(``tfds.data_source`` over ``array_record`` files), which needs no TensorFlow.
Nothing is ever downloaded: when the prepared files are absent
:class:`DatasetNotFoundError` is raised at once, saying how to prepare them.
The default ``data_dir`` is ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

Splits follow the FDS paper: a validation set (``val_fraction`` of the
training set, 5% by default) is held out from the training set by a seeded
draw, and the test set is untouched. :func:`resplit` re-draws it without
reloading.

Normalisation: images are float32 NHWC, ``(x / 255 - mean) / std`` per channel
with the standard constants for MNIST, Fashion-MNIST, SVHN and CIFAR-10. For
``'digits'`` and ``'mnist1d'`` a single mean/std is computed on the whole
training portion (train + validation, before the hold-out), so that re-drawing
the validation split never changes the scaling of the data. Labels are int32.

Device memory (float32 inputs plus int32 labels; "train" is the whole training
portion, of which ``val_fraction`` becomes the validation split)::

    dataset         train N  test N  example shape  train inputs  test inputs  all arrays
    mnist1d            4000    1000  (40, 1)             0.64 MB      0.16 MB     0.82 MB
    mnist1d_large     20000    5000  (40, 1)             3.20 MB      0.80 MB     4.10 MB
    digits             1437     360  (8, 8, 1)           0.37 MB      0.09 MB     0.47 MB
    mnist             60000   10000  (28, 28, 1)       188.16 MB     31.36 MB   219.80 MB
    fashion_mnist     60000   10000  (28, 28, 1)       188.16 MB     31.36 MB   219.80 MB
    svhn_cropped      73257   26032  (32, 32, 3)       900.18 MB    319.88 MB  1220.46 MB
    cifar10           50000   10000  (32, 32, 3)       614.40 MB    122.88 MB   737.52 MB

(e.g. CIFAR-10 train: 50000 x 32 x 32 x 3 x 4 B = 614.4 MB; SVHN's 531k
``extra`` split is not used.) Forward-mode hypergradients carry no tangent for
the data, so these numbers are not doubled by ``jax.jvp``.
:func:`check_fits` checks them against the device before any compute.

Example:
  >>> ds = load_dataset('digits', seed=0)
  >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape
  ((1365, 8, 8, 1), (72, 8, 8, 1), (360, 8, 8, 1))
"""

from hypergrad.experiments.data.batching import augment
from hypergrad.experiments.data.batching import batch_indices
from hypergrad.experiments.data.batching import get_batch
from hypergrad.experiments.data.dataset import DATASET_NAMES
from hypergrad.experiments.data.dataset import DEBIAN_FASHION_MNIST_DIR
from hypergrad.experiments.data.dataset import Dataset
from hypergrad.experiments.data.dataset import DatasetNotFoundError
from hypergrad.experiments.data.dataset import pooled_train
from hypergrad.experiments.data.dataset import resplit
from hypergrad.experiments.data.dataset import split_indices
from hypergrad.experiments.data.memory import check_fits
from hypergrad.experiments.data.memory import dataset_nbytes
from hypergrad.experiments.data.memory import to_device
from hypergrad.experiments.data.sources import default_data_dir
from hypergrad.experiments.data.sources import load_dataset
from hypergrad.experiments.data.sources import read_idx

__all__ = [
    'DATASET_NAMES',
    'DEBIAN_FASHION_MNIST_DIR',
    'Dataset',
    'DatasetNotFoundError',
    'augment',
    'batch_indices',
    'check_fits',
    'dataset_nbytes',
    'default_data_dir',
    'get_batch',
    'load_dataset',
    'pooled_train',
    'read_idx',
    'resplit',
    'split_indices',
    'to_device',
]
