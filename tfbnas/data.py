"""Datasets as `tf.data` pipelines with the splits a search needs.

Every dataset is described by a :class:`DatasetInfo` (shape, classes, normalisation) and served as
:class:`Splits`: ``search_train`` and ``search_val`` are the two halves of the training set (weights
learn on one, architecture parameters on the other), ``train`` is the whole training set and
``test`` the held-out split that final numbers are reported on.

Sources:

* ``fashion_mnist`` is read from the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or from ``--data_dir``; tfds's ``fashion_mnist`` is the
  fallback when those files are absent.
* Any other name (``cifar10``, ``cifar100``, ``imagenet2012``, ...) comes through TensorFlow
  Datasets from ``--data_dir``. Nothing is downloaded unless ``download=True``: an offline machine
  gets one clear :class:`DatasetNotFoundError` instead of a retry loop.

Training pipelines are deterministic functions of ``(seed, epoch, step)``: the order of epoch ``e``
is a stateless shuffle seeded by ``(seed, e)`` and augmentation is seeded per example, so a resumed
run sees exactly the batches an uninterrupted one would.
"""

import dataclasses
import gzip
import os
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfbnas.config import AUGMENTATIONS
from tfbnas.errors import DatasetNotFoundError, IdxFormatError  # noqa: F401  (importable from here)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# tfds datasets small enough to hold in memory; others stream from their TFRecords.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Args:
        name: dataset name as given to ``--dataset``.
        image_shape: ``(height, width, channels)`` of the images fed to the model.
        num_classes: number of labels.
        mean, std: per-channel normalisation applied by the pipeline (inputs are ``(x/255 - mean) / std``).
        augment: augmentation recipe, one of :data:`AUGMENTATIONS`: ``"crop_flip"`` (pad-crop +
            horizontal flip), ``"flip"`` (horizontal flip only), ``"resized_crop"`` (ImageNet style) or
            ``"none"``.
        pad: padding in pixels for ``crop_flip``.
    """

    name: str
    image_shape: Tuple[int, int, int]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: str = "crop_flip"
    pad: int = 4


KNOWN_DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), "crop_flip", 2),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), "none", 0),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip", 4
    ),
    "cifar100": DatasetInfo(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip", 4
    ),
    "imagenet2012": DatasetInfo(
        "imagenet2012", (224, 224, 3), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "resized_crop", 0
    ),
}


class Splits(NamedTuple):
    """The four pipelines of a dataset plus its description and split sizes."""

    search_train: tf.data.Dataset
    search_val: tf.data.Dataset
    train: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo
    sizes: dict


# --------------------------------------------------------------------------------------------- IDX


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a numpy array.

    Args:
        path: path of an ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz`` file.

    Returns:
        The array with the shape and dtype the file's header declares.

    Raises:
        IdxFormatError: the header is not IDX or the data is shorter than the header says.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise IdxFormatError(f"cannot read IDX file {path}: {e}; re-install the dataset files") from e
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise IdxFormatError(f"{path} is not an IDX file (bad magic number); re-install the dataset files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path} holds {len(raw) - header} data bytes but its header declares shape {shape} "
            f"({expected} bytes): the file is truncated or corrupt; re-install the dataset files"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: str, stem: str) -> Optional[str]:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    return None


def fashion_mnist_dirs(data_dir: Optional[str] = None):
    """Directories searched for the Fashion-MNIST IDX files, in order."""
    dirs = []
    if data_dir:
        dirs += [data_dir, os.path.join(data_dir, "fashion-mnist"), os.path.join(data_dir, "fashion_mnist")]
    if os.environ.get("TFBNAS_FASHION_MNIST_DIR"):
        dirs.append(os.environ["TFBNAS_FASHION_MNIST_DIR"])
    return dirs + list(FASHION_MNIST_DIRS)


def load_fashion_mnist_idx(data_dir: Optional[str] = None):
    """Fashion-MNIST from IDX files, or ``None`` when no directory holds all four files.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with uint8 images ``[N, 28, 28, 1]`` and int64 labels.
    """
    for directory in fashion_mnist_dirs(data_dir):
        paths = {k: _find_idx(directory, v) for k, v in FASHION_MNIST_FILES.items()}
        if all(paths.values()):
            arrays = {k: read_idx(p) for k, p in paths.items()}
            for split in ("train", "test"):
                if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
                    raise IdxFormatError(
                        f"{directory}: {split} images and labels differ in length; re-install the dataset files"
                    )
            return (
                (arrays["train_images"][..., None], arrays["train_labels"].astype(np.int64)),
                (arrays["test_images"][..., None], arrays["test_labels"].astype(np.int64)),
            )
    return None


# -------------------------------------------------------------------------------------------- tfds


def _how_to_get(name: str) -> str:
    if name == "fashion_mnist":
        return "install Debian's package (apt-get install -y dataset-fashion-mnist) or pass --data_dir"
    if name == "imagenet2012":
        return (
            "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual and run "
            "`tfds build imagenet2012 --data_dir=DATA_DIR`, then pass --data_dir=DATA_DIR"
        )
    return f"run `tfds build {name} --data_dir=DATA_DIR` on a machine with internet and pass --data_dir=DATA_DIR"


def tfds_builder(name: str, data_dir: Optional[str] = None, download: bool = False):
    """A prepared tfds builder for ``name``, checking that it is on disk before anything is downloaded.

    Raises:
        DatasetNotFoundError: the dataset is not prepared in ``data_dir`` and ``download`` is False
            (or the name is unknown to tfds).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
        raise DatasetNotFoundError(
            f"dataset '{name}' is neither a tfds dataset nor prepared in data_dir={data_dir!r} "
            f"({type(e).__name__}); check --dataset or {_how_to_get(name)}"
        ) from None
    if not builder.is_prepared():
        if not download:
            raise DatasetNotFoundError(
                f"dataset '{name}' is not prepared in {builder.data_dir_root}; {_how_to_get(name)} "
                "(or pass --download on a machine with internet)"
            )
        builder.download_and_prepare()
    return builder


def _tfds_arrays(builder, split: str):
    import tensorflow_datasets as tfds

    images, labels = tfds.as_numpy(_as_supervised(builder, split, batch_size=-1))
    return images.astype(np.uint8), labels.astype(np.int64)


def _as_supervised(builder, split, **kwargs):
    """``(image, label)`` pairs, also for datasets stored without supervised keys (image/label features)."""
    if builder.info.supervised_keys:
        return builder.as_dataset(split=split, as_supervised=True, **kwargs)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetNotFoundError(
            f"dataset '{builder.name}' has no supervised keys and no image/label features "
            f"({list(features)}); tfbnas needs an image-classification dataset"
        )
    ds = builder.as_dataset(split=split, **kwargs)
    if isinstance(ds, dict):  # batch_size=-1 returns the whole split as tensors
        return ds["image"], ds["label"]
    return ds.map(lambda e: (e["image"], e["label"]))


def _test_split(builder) -> str:
    splits = builder.info.splits
    for name in ("test", "validation"):
        if name in splits:
            return name
    raise DatasetNotFoundError(f"dataset '{builder.name}' has no test or validation split ({list(splits)})")


def dataset_info(name: str, data_dir: Optional[str] = None) -> DatasetInfo:
    """The :class:`DatasetInfo` of a known dataset, or one read from tfds metadata for any other name."""
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name]
    builder = tfds_builder(name, data_dir)
    shape = tuple(builder.info.features["image"].shape)
    channels = shape[-1] or 3
    return DatasetInfo(name, shape, builder.info.features["label"].num_classes, (0.5,) * channels, (0.25,) * channels)


def load_arrays(name: str = "fashion_mnist", data_dir: Optional[str] = None, download: bool = False):
    """Training and test split of a small dataset as numpy arrays.

    Args:
        name: dataset name (``fashion_mnist``, ``cifar10``, any tfds image-classification name).
        data_dir: where to look first (IDX files or a tfds data dir).
        download: allow tfds to download when the data is missing.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images ``[N, H, W, C]``, int64 labels.

    Example:
        >>> (x, y), (xt, yt) = load_arrays("fashion_mnist")
        >>> x.shape, xt.shape
        ((60000, 28, 28, 1), (10000, 28, 28, 1))
    """
    if name == "fashion_mnist":
        arrays = load_fashion_mnist_idx(data_dir)
        if arrays is not None:
            return arrays
        try:
            builder = tfds_builder(name, data_dir, download)
        except DatasetNotFoundError:
            raise DatasetNotFoundError(
                "Fashion-MNIST not found: looked for its IDX files in "
                + ", ".join(fashion_mnist_dirs(data_dir))
                + f" and for a prepared tfds 'fashion_mnist' in {data_dir or 'the default tfds data dir'}; "
                + _how_to_get(name)
            ) from None
    else:
        builder = tfds_builder(name, data_dir, download)
    size = builder.info.dataset_size or 0
    if size > IN_MEMORY_LIMIT_BYTES:
        raise ValueError(f"dataset '{name}' ({size / 1e9:.1f} GB) is too large for load_arrays; use make_splits")
    return _tfds_arrays(builder, "train"), _tfds_arrays(builder, _test_split(builder))


# ------------------------------------------------------------------------------------ preprocessing


def normalize(images, info: DatasetInfo):
    """uint8 (or float in [0, 255]) images → float32 normalised the way tfbnas models expect."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(info.mean, tf.float32)) / tf.constant(info.std, tf.float32)


def normalize_numpy(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """:func:`normalize` for numpy arrays (deploy parity checks, tests)."""
    x = images.astype(np.float32) / 255.0
    return ((x - np.array(info.mean, np.float32)) / np.array(info.std, np.float32)).astype(np.float32)


def with_augment(info: DatasetInfo, augment: Optional[str]) -> DatasetInfo:
    """``info`` with the augmentation recipe ``augment`` (one of :data:`AUGMENTATIONS`); ``info`` itself
    when ``augment`` is None (the dataset's own recipe).

    Example:
        >>> with_augment(KNOWN_DATASETS["fashion_mnist"], "none").augment
        'none'
    """
    if augment is None or augment == info.augment:
        return info
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{augment}'; use one of {list(AUGMENTATIONS)}")
    return dataclasses.replace(info, augment=augment)


def augment(image, seed, info: DatasetInfo):
    """Standard augmentation for one uint8 image, driven by a stateless ``seed`` (shape [2] int)."""
    if info.augment == "none":
        return image
    h, w, c = info.image_shape
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if info.augment == "crop_flip":
        padded = tf.pad(image, [[info.pad, info.pad], [info.pad, info.pad], [0, 0]])
        image = tf.image.stateless_random_crop(padded, (h, w, c), seed=seeds[0])
    elif info.augment == "resized_crop":
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4]), seed=seeds[0], area_range=(0.08, 1.0),
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.image.resize(tf.slice(image, begin, size), (h, w))
    elif info.augment != "flip":
        raise ValueError(f"unknown augmentation '{info.augment}'")
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def _eval_resize(image, info: DatasetInfo):
    h, w, _ = info.image_shape
    if image.shape[0] == h and image.shape[1] == w:
        return image
    # ImageNet-style evaluation: resize the short side to 8/7 of the target, centre crop.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (h * 8.0 / 7.0) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(shape * scale, tf.int32))
    return tf.image.resize_with_crop_or_pad(image, h, w)


# ---------------------------------------------------------------------------------------- pipelines


def epoch_stream(images, labels, info: DatasetInfo, batch_size: int, seed: int, train: bool,
                 start_epoch: int = 0, skip_batches: int = 0) -> tf.data.Dataset:
    """An endless (train) or one-pass (eval) batched pipeline over in-memory arrays.

    Training order: epoch ``e`` is ``stateless_shuffle(range(N), seed=(seed, e))`` cut into
    ``N // batch_size`` full batches; an example's augmentation is seeded by ``(seed, e * N + position)``.
    Starting at ``start_epoch`` and skipping ``skip_batches`` therefore reproduces the stream an
    uninterrupted run sees at that point.

    Args:
        images, labels: numpy arrays (uint8 images ``[N, H, W, C]``).
        info: the dataset's :class:`DatasetInfo`.
        batch_size: examples per batch (``drop_remainder`` for training so every step has one shape).
        seed: the run's data seed.
        train: shuffled, augmented and repeated when True; in order and one pass when False.
        start_epoch, skip_batches: resume position (training only).

    Returns:
        A ``tf.data.Dataset`` of ``(normalised float32 images, int64 labels)`` batches.
    """
    n = len(images)
    images_t = tf.constant(images)
    labels_t = tf.constant(labels, tf.int64)
    if not train:
        ds = tf.data.Dataset.from_tensor_slices((images_t, labels_t))
        ds = ds.map(lambda x, y: (normalize(_eval_resize(x, info), info), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    if n < batch_size:
        raise ValueError(f"{n} training examples are fewer than one batch of {batch_size}; "
                         "lower --batch_size or raise --train_examples")

    def example(epoch, position, index):
        image = tf.gather(images_t, index)
        image = augment(image, tf.stack([tf.cast(seed, tf.int64), epoch * n + position]), info)
        return normalize(image, info), tf.gather(labels_t, index)

    def one_epoch(epoch):
        # Batches never straddle epochs, so epoch e always starts at batch e * (n // batch_size).
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, epoch]))
        ds = tf.data.Dataset.from_tensor_slices((tf.fill([n], epoch), tf.range(n, dtype=tf.int64), order))
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size, drop_remainder=True)

    ds = tf.data.Dataset.counter(start_epoch).flat_map(one_epoch)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def subset(images, labels, count: Optional[int], seed: int):
    """A fixed random subset of ``count`` examples (all when None)."""
    if not count or count >= len(images):
        return images, labels
    index = np.random.RandomState(seed).permutation(len(images))[:count]
    index.sort()
    return images[index], labels[index]


def make_splits(name: str = "fashion_mnist", batch_size: int = 64, data_dir: Optional[str] = None,
                train_examples: Optional[int] = None, test_examples: Optional[int] = None, seed: int = 0,
                download: bool = False, eval_batch_size: Optional[int] = None,
                start_epoch: int = 0, skip_batches: int = 0, augment: Optional[str] = None) -> Splits:
    """All pipelines of a dataset: search halves, full train, test.

    Args:
        name: dataset name.
        batch_size: training batch size.
        data_dir: where the data lives (IDX files or a tfds data dir).
        train_examples: keep a fixed random subset of this many training examples (quick runs).
        test_examples: likewise for the test split.
        seed: data seed: subset choice, the search split, shuffling and augmentation.
        download: allow tfds to download missing data.
        eval_batch_size: batch size of the test pipeline (defaults to ``batch_size``).
        start_epoch, skip_batches: resume position of the training streams.
        augment: augmentation of the training streams (one of :data:`AUGMENTATIONS`; default: the
            dataset's own, ``DatasetInfo.augment``).

    Returns:
        :class:`Splits`. ``search_train``/``search_val`` are two disjoint halves of the (subset)
        training set; training streams repeat forever (use ``steps_per_epoch``), ``test`` is one pass.

    Example:
        >>> splits = make_splits("fashion_mnist", batch_size=64, train_examples=2000)
        >>> splits.sizes
        {'train': 2000, 'search_train': 1000, 'search_val': 1000, 'test': 10000}
    """
    info = with_augment(KNOWN_DATASETS.get(name) or dataset_info(name, data_dir), augment)
    if name == "imagenet2012" or (name not in ("fashion_mnist", "mnist", "cifar10", "cifar100")
                                   and _too_large(name, data_dir)):
        return _streaming_splits(name, info, batch_size, data_dir, train_examples, test_examples, seed,
                                 download, eval_batch_size)
    (x_train, y_train), (x_test, y_test) = load_arrays(name, data_dir, download)
    x_train, y_train = subset(x_train, y_train, train_examples, seed)
    x_test, y_test = subset(x_test, y_test, test_examples, seed + 1)
    half = np.random.RandomState(seed + 2).permutation(len(x_train))
    first, second = np.sort(half[: len(half) // 2]), np.sort(half[len(half) // 2:])
    eval_bs = eval_batch_size or batch_size
    stream = dict(batch_size=batch_size, train=True, start_epoch=start_epoch, skip_batches=skip_batches)
    return Splits(
        search_train=epoch_stream(x_train[first], y_train[first], info, seed=seed, **stream),
        search_val=epoch_stream(x_train[second], y_train[second], info, seed=seed + 1, **stream),
        train=epoch_stream(x_train, y_train, info, seed=seed, **stream),
        test=epoch_stream(x_test, y_test, info, eval_bs, seed=seed, train=False),
        info=info,
        sizes={"train": len(x_train), "search_train": len(first), "search_val": len(second), "test": len(x_test)},
    )


def _too_large(name, data_dir) -> bool:
    builder = tfds_builder(name, data_dir)
    return (builder.info.dataset_size or 0) > IN_MEMORY_LIMIT_BYTES


def _streaming_splits(name, info, batch_size, data_dir, train_examples, test_examples, seed, download,
                      eval_batch_size) -> Splits:
    """Large tfds datasets (ImageNet): read from TFRecords, shuffle with a buffer, halves by index."""
    builder = tfds_builder(name, data_dir, download)
    n_train = builder.info.splits["train"].num_examples
    if train_examples:
        n_train = min(n_train, train_examples)
    test_split = _test_split(builder)
    n_test = builder.info.splits[test_split].num_examples
    if test_examples:
        n_test = min(n_test, test_examples)
    half = n_train // 2

    def train_stream(split, offset):
        ds = _as_supervised(builder, split, shuffle_files=True, read_config=_read_config(seed))
        ds = ds.shuffle(10 * batch_size, seed=seed + offset).repeat()
        ds = ds.enumerate().map(
            lambda i, xy: (normalize(augment(xy[0], tf.stack([tf.cast(seed + offset, tf.int64), i]), info), info),
                           xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    test = _as_supervised(builder, f"{test_split}[:{n_test}]")
    test = test.map(lambda x, y: (normalize(_eval_resize(x, info), info), y), num_parallel_calls=tf.data.AUTOTUNE)
    return Splits(
        search_train=train_stream(f"train[:{half}]", 0),
        search_val=train_stream(f"train[{half}:{n_train}]", 1),
        train=train_stream(f"train[:{n_train}]", 2),
        test=test.batch(eval_batch_size or batch_size).prefetch(tf.data.AUTOTUNE),
        info=info,
        sizes={"train": n_train, "search_train": half, "search_val": n_train - half, "test": n_test},
    )


def _read_config(seed):
    import tensorflow_datasets as tfds

    return tfds.ReadConfig(shuffle_seed=seed)
