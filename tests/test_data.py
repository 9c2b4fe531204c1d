"""tfbnas.data against the real Fashion-MNIST files, a locally prepared tfds dataset, and bad input."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfbnas import data

IDX_DIR = data.FASHION_MNIST_DIRS[0]
needs_idx = pytest.mark.skipif(not os.path.isdir(IDX_DIR), reason=f"{IDX_DIR} absent: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def arrays():
    return data.load_arrays("fashion_mnist")


@needs_idx
def test_idx_reader_shapes_dtypes_labels(arrays):
    (x, y), (xt, yt) = arrays
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert y.min() == 0 and y.max() == 9 and yt.min() == 0 and yt.max() == 9
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    assert np.all(np.bincount(y) == 6000) and np.all(np.bincount(yt) == 1000)


@needs_idx
def test_idx_reader_matches_raw_bytes(arrays):
    """Pixel sums of a few images, computed independently from the raw gzip bytes (header 16 bytes)."""
    (x, y), (xt, _) = arrays
    with gzip.open(os.path.join(IDX_DIR, "train-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    with gzip.open(os.path.join(IDX_DIR, "train-labels-idx1-ubyte.gz")) as f:
        raw_labels = f.read()
    for i in (0, 1, 12345, 59999):
        start = 16 + i * 784
        assert int(x[i].sum()) == sum(raw[start:start + 784])
        assert y[i] == raw_labels[8 + i]
    # The first training image is an ankle boot (label 9), the first test image too.
    assert y[0] == 9 and int(x[0].sum()) > 0 and int(xt[0].sum()) > 0


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    good = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in good.shape)
    path = tmp_path / "ok-idx3-ubyte"
    path.write_bytes(header + good.tobytes())
    np.testing.assert_array_equal(data.read_idx(str(path)), good)
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(header + good.tobytes()[:-5])
    with pytest.raises(data.IdxFormatError, match="truncated"):
        data.read_idx(str(truncated))
    foreign = tmp_path / "png-idx3-ubyte.gz"
    with gzip.open(foreign, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(data.IdxFormatError, match="not an IDX file"):
        data.read_idx(str(foreign))


@needs_idx
def test_split_sizes_and_batches():
    splits = data.make_splits("fashion_mnist", batch_size=100, train_examples=1000, test_examples=300)
    assert splits.sizes == {"train": 1000, "search_train": 500, "search_val": 500, "test": 300}
    full = data.make_splits("fashion_mnist", batch_size=100)
    assert full.sizes == {"train": 60000, "search_train": 30000, "search_val": 30000, "test": 10000}
    info = data.dataset_info("fashion_mnist")
    seen = []
    for images, labels in splits.search_train.take(5):
        assert images.shape == (100, 28, 28, 1) and images.dtype == tf.float32 and labels.dtype == tf.int64
        seen.append(labels.numpy())
    assert np.bincount(np.concatenate(seen), minlength=10).sum() == 500
    test_batches = list(splits.test)
    assert sum(len(b[1]) for b in test_batches) == 300
    # normalisation: a test batch has roughly zero mean and unit variance
    values = np.concatenate([b[0].numpy().ravel() for b in test_batches])
    assert abs(values.mean()) < 0.1 and 0.8 < values.std() < 1.2
    assert info.num_classes == 10


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_search_halves_are_disjoint_and_cover_the_training_set(tmp_path):
    """The real search-train and search-val streams: every training image (image k is filled with the value
    k, so its centre pixel names it through crop/flip augmentation) in exactly one half."""
    n = 200
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.repeat(np.arange(n), 28 * 28).reshape(n, 28, 28))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(n) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    splits = data.make_splits("fashion_mnist", batch_size=20, data_dir=str(tmp_path))
    assert splits.sizes["search_train"] == splits.sizes["search_val"] == n // 2

    def ids(stream):  # one epoch: n/2 images in batches of 20
        centres = np.concatenate([images[:, 14, 14, 0].numpy() for images, _ in stream.take(n // 2 // 20)])
        return np.round(centres, 4)

    first, second = ids(splits.search_train), ids(splits.search_val)
    assert len(set(first)) == len(first) == n // 2 and len(set(second)) == n // 2
    assert not set(first) & set(second) and len(set(first) | set(second)) == n


@needs_idx
def test_training_stream_resumes_exactly():
    """Skipping k batches of a fresh pipeline gives the batches an uninterrupted pipeline gives after k."""
    kwargs = dict(batch_size=50, train_examples=400, seed=3)
    straight = [b for b in data.make_splits("fashion_mnist", **kwargs).search_train.take(12)]
    resumed = [b for b in data.make_splits("fashion_mnist", start_epoch=1, skip_batches=2, **kwargs)
               .search_train.take(6)]
    # 200 images per half, 4 batches per epoch: epoch 1 batch 2 is straight[6]
    for (xa, ya), (xb, yb) in zip(straight[6:], resumed):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # augmentation is on: the same example differs between epochs (crop/flip), the order too
    assert not np.array_equal(straight[0][1].numpy(), straight[4][1].numpy())


def _prepare_tfds(tmp_path, name, version, train, test):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=train[0].shape[1:]),
        "label": tfds.features.ClassLabel(num_classes=10),
    })

    def ds(x, y):
        return tf.data.Dataset.from_tensor_slices({"image": x, "label": y})

    builder = tfds.dataset_builders.TfDataBuilder(
        name=name, version=version, config=None, features=features, data_dir=str(tmp_path),
        split_datasets={"train": ds(*train), "test": ds(*test)},
    )
    builder.download_and_prepare()


@needs_idx
def test_tfds_fallback_reads_locally_prepared_fashion_mnist(tmp_path, arrays, monkeypatch):
    (x, y), (xt, yt) = arrays
    _prepare_tfds(tmp_path, "fashion_mnist", "3.0.1", (x[:300], y[:300]), (xt[:100], yt[:100]))
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ())  # hide the IDX files: tfds must serve
    (a, b), (c, d) = data.load_arrays("fashion_mnist", data_dir=str(tmp_path))
    assert a.shape == (300, 28, 28, 1) and c.shape == (100, 28, 28, 1)
    # tfds shuffles on write: compare as multisets of (pixel sum, label)
    assert sorted(zip(a.reshape(300, -1).sum(1).tolist(), b.tolist())) == \
        sorted(zip(x[:300].reshape(300, -1).sum(1).tolist(), y[:300].tolist()))
    assert np.bincount(d, minlength=10).tolist() == np.bincount(yt[:100], minlength=10).tolist()


def test_any_tfds_name_from_data_dir(tmp_path):
    rng = np.random.RandomState(0)
    train = (rng.randint(0, 255, (64, 16, 16, 3)).astype(np.uint8), rng.randint(0, 10, 64))
    test = (rng.randint(0, 255, (20, 16, 16, 3)).astype(np.uint8), rng.randint(0, 10, 20))
    _prepare_tfds(tmp_path, "tiny_local_images", "1.0.0", train, test)
    splits = data.make_splits("tiny_local_images", batch_size=8, data_dir=str(tmp_path))
    assert splits.sizes == {"train": 64, "search_train": 32, "search_val": 32, "test": 20}
    assert splits.info.image_shape == (16, 16, 3) and splits.info.num_classes == 10
    images, labels = next(iter(splits.search_val))
    assert images.shape == (8, 16, 16, 3)


def test_missing_dataset_is_one_clear_error_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ())
    monkeypatch.delenv("TFBNAS_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_arrays("fashion_mnist", data_dir=str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and "apt-get install -y dataset-fashion-mnist" in message
    with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
        data.load_arrays("cifar10", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="neither a tfds dataset"):
        data.make_splits("no_such_dataset_xyz", data_dir=str(tmp_path))
    # nothing was downloaded into the data dir
    assert not any(p.name.endswith(".tar.gz") or p.suffix == ".gz" for p in tmp_path.rglob("*"))


@needs_idx
def test_augmentation_keeps_shape_and_label_distribution():
    info = data.dataset_info("fashion_mnist")
    image = tf.constant(np.arange(784, dtype=np.uint8).reshape(28, 28, 1))
    outs = [data.augment(image, tf.constant([0, s], tf.int64), info).numpy() for s in range(8)]
    assert all(o.shape == (28, 28, 1) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1  # different seeds, different crops/flips
    np.testing.assert_array_equal(outs[0], data.augment(image, tf.constant([0, 0], tf.int64), info).numpy())


@needs_idx
@pytest.mark.parametrize("recipe", ["none", "flip"])
def test_augment_choice_reaches_the_training_stream(recipe):
    """``augment=`` replaces the dataset's crop_flip: every training image is its normalised original
    ("none") or that or its mirror ("flip"), and "flip" mirrors some of them; the dataset's own recipe
    (crop_flip) moves pixels beyond a mirror."""
    (x, y), _ = data.load_arrays("fashion_mnist")
    x, y = data.subset(x, y, 256, 5)
    info = data.KNOWN_DATASETS["fashion_mnist"]
    originals = {label: [] for label in range(10)}
    for image, label in zip(data.normalize_numpy(x, info), y):
        originals[int(label)].append(image)

    def match(image, label):
        """0: an original of its class, 1: a mirrored one, None: neither."""
        for original in originals[int(label)]:
            if np.allclose(image, original, atol=1e-5):
                return 0
            if np.allclose(image, original[:, ::-1], atol=1e-5):
                return 1
        return None

    def matches(augment):
        splits = data.make_splits("fashion_mnist", batch_size=64, train_examples=256, seed=5, augment=augment)
        return [match(img, lab) for images, labels in splits.train.take(4)
                for img, lab in zip(images.numpy(), labels.numpy())]

    found = matches(recipe)
    assert None not in found
    if recipe == "none":
        assert set(found) == {0}
    else:
        assert set(found) == {0, 1}  # images that are symmetric match 0 either way; the rest are mirrored at random
    assert None in matches(None)  # crop_flip: shifted crops match neither
    assert data.with_augment(info, None) is info and data.with_augment(info, "crop_flip") is info
    with pytest.raises(ValueError, match="unknown augmentation 'jitter'"):
        data.with_augment(info, "jitter")
