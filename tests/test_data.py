"""Bad input to the data layer: every failure names the path and what was expected.

Fixtures are written in each data set's exact on-disk format into a temporary directory by
`pmae.data`'s writers; nothing here touches the network or ../shared.
"""
import pickle
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from pmae.data import (CIFAR10_DIR, DataError, DataNotFoundError, ImageDataset, Split, TINY_DIR, load_dataset,
                       load_photos_data, medmnist_file, small_subset, write_cifar10_pickles, write_image_folder,
                       write_medmnist_npz, write_tinyimagenet)


@pytest.fixture(scope='module')
def photos32():
    return small_subset(load_photos_data(), 30, 12)


@pytest.fixture(scope='module')
def photos64():
    return small_subset(load_photos_data(size=64, stride=32, scale=1.0), 30, 12)


def relabel(ds: ImageDataset, train_labels) -> ImageDataset:
    "A copy of `ds` whose training labels are replaced, bypassing validation (to write broken files)."
    bad = object.__new__(ImageDataset)
    bad.__dict__.update(ds.__dict__, train=Split(ds.train.images, torch.as_tensor(train_labels)))
    return bad


# --- names and missing data -------------------------------------------------------------------

def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar100': choose one of digits, photos, cifar10, tinyimagenet, folder, bloodmnist"):
        load_dataset('cifar100')


@pytest.mark.parametrize('name, expected', [
    ('cifar10', r"CIFAR-10 not found: expected .*/cifar-10-batches-py/ \(torchvision's pickles\) or an image folder .*/cifar10/train/<class>/; pass download=True"),
    ('tinyimagenet', r"Tiny ImageNet not found: expected .*/tiny-imagenet-200/ or .*/tiny-imagenet-200.zip; pass download=True"),
    ('bloodmnist', r"BloodMNIST not found: expected .*/bloodmnist_64.npz; pass download=True"),
    ('dermamnist', r"DermaMNIST not found: expected .*/dermamnist_64.npz"),
    ('pathmnist', r"PathMNIST not found: expected .*/pathmnist_64.npz"),
    ('folder', r"no image folder at .*/empty: expected .*/empty/train/<class>/<image>"),
])
def test_missing_data(tmp_path, name, expected):
    root = tmp_path / 'empty' if name == 'folder' else tmp_path
    with pytest.raises(DataNotFoundError, match=expected):
        load_dataset(name, root)


def test_missing_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset('cifar10', tmp_path)


def test_medmnist_28_and_bad_size(tmp_path, photos32):
    small28 = ImageDataset('b', Split(photos32.train.images[:, :, :28, :28].contiguous(), photos32.train.labels),
                           Split(photos32.eval.images[:, :, :28, :28].contiguous(), photos32.eval.labels), photos32.classes)
    write_medmnist_npz(small28, tmp_path, 'bloodmnist', 28)
    ds = load_dataset('bloodmnist', tmp_path, size=28)
    assert ds.shape == (3, 28, 28) and ds.name == 'bloodmnist' and ds.eval_split == 'val'
    with pytest.raises(ValueError, match=r"bloodmnist: size must be one of \[28, 64, 128, 224\], got 32"):
        load_dataset('bloodmnist', tmp_path, size=32)


# --- wrong layout ----------------------------------------------------------------------------

def test_cifar_missing_batch(tmp_path, photos32):
    write_cifar10_pickles(photos32, tmp_path)
    (tmp_path / CIFAR10_DIR / 'data_batch_3').unlink()
    with pytest.raises(DataError, match=r"CIFAR-10 file missing: .*/cifar-10-batches-py/data_batch_3"):
        load_dataset('cifar10', tmp_path)


def test_cifar_wrong_contents(tmp_path, photos32):
    write_cifar10_pickles(photos32, tmp_path)
    with open(tmp_path / CIFAR10_DIR / 'data_batch_2', 'wb') as f:
        pickle.dump({'data': np.zeros((4, 1024), np.uint8), 'labels': [0] * 4}, f)
    with pytest.raises(DataError, match=r"data_batch_2: expected uint8 data of shape \(N, 3072\) and N labels, got uint8 \(4, 1024\)"):
        load_dataset('cifar10', tmp_path)


def test_tiny_missing_annotations(tmp_path, photos64):
    write_tinyimagenet(photos64, tmp_path)
    (tmp_path / TINY_DIR / 'val' / 'val_annotations.txt').unlink()
    with pytest.raises(DataError, match=r"not a tiny-imagenet-200 layout: .*/val/val_annotations.txt is missing"):
        load_dataset('tinyimagenet', tmp_path)


def test_tiny_missing_wnids(tmp_path, photos64):
    write_tinyimagenet(photos64, tmp_path)
    (tmp_path / TINY_DIR / 'wnids.txt').unlink()
    with pytest.raises(DataError, match=r"not a tiny-imagenet-200 layout: .*/wnids.txt is missing"):
        load_dataset('tinyimagenet', tmp_path)


def test_folder_without_classes(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(DataError, match=r"train has no class folders: expected .*/train/<class>/<image>"):
        load_dataset('folder', tmp_path)


def test_folder_without_eval_split(tmp_path, photos32):
    write_image_folder(photos32, tmp_path)
    (tmp_path / 'test').rename(tmp_path / 'holdout')
    with pytest.raises(DataError, match=r"has no evaluation folder: expected one of .*/test, .*/val"):
        load_dataset('folder', tmp_path)


def test_folder_with_an_empty_class_folder(tmp_path, photos32):
    write_image_folder(photos32, tmp_path)
    (tmp_path / 'train' / 'zebra').mkdir()
    with pytest.raises(DataError, match=rf"^empty class folder {re.escape(str(tmp_path / 'train' / 'zebra'))}: add its images or remove it$"):
        load_dataset('folder', tmp_path, cache=False)
    (tmp_path / 'train' / 'zebra').rmdir()
    (tmp_path / 'test' / 'zebra').mkdir(); (tmp_path / 'test' / 'zebra' / 'notes.txt').write_text('no images here')
    with pytest.raises(DataError, match=rf"^empty class folder {re.escape(str(tmp_path / 'test' / 'zebra'))}: "):
        load_dataset('folder', tmp_path, cache=False)


def test_folder_hidden_folders_are_not_classes(tmp_path, photos32):
    write_image_folder(photos32, tmp_path)
    for split in ('train', 'test'): (tmp_path / split / '.ipynb_checkpoints').mkdir()
    ds = load_dataset('folder', tmp_path, cache=False)
    assert ds.classes == sorted(photos32.classes)


@pytest.mark.parametrize('change, message', [
    (lambda root: (root / 'test' / 'rocket').rename(root / 'test' / 'rockets'), "only in {test}: rockets; only in {train}: chelsea, rocket"),   # the fixture has no test chelsea
    (lambda root: shutil.copytree(root / 'test' / 'coffee', root / 'test' / 'tea'), "only in {test}: tea; only in {train}: chelsea"),
])
def test_folder_evaluation_class_without_training_images(tmp_path, photos32, change, message):
    write_image_folder(photos32, tmp_path)
    change(tmp_path)
    expected = (f"{tmp_path / 'train'} and {tmp_path / 'test'} have different classes ("
                + message.format(train=tmp_path / 'train', test=tmp_path / 'test') + "): every evaluation class needs training images")
    with pytest.raises(DataError, match='^' + re.escape(expected) + '$'):
        load_dataset('folder', tmp_path, cache=False)


def test_folder_evaluation_without_a_class_is_labelled_by_name(tmp_path, capsys, photos32):
    write_image_folder(photos32, tmp_path)
    shutil.rmtree(tmp_path / 'test' / 'coffee')
    ds = load_dataset('folder', tmp_path, cache=False)
    assert f"note: {tmp_path / 'test'} has no images of 2 of the 6 classes (chelsea, coffee)" in capsys.readouterr().out
    assert ds.classes == sorted(photos32.classes)
    names = [photos32.classes[l] for l in photos32.eval.labels.tolist() if photos32.classes[l] != 'coffee']
    assert [ds.classes[l] for l in ds.eval.labels.tolist()] == sorted(names)     # every label means the same class as in training


def test_folder_mixed_sizes(tmp_path, photos32, photos64):
    write_image_folder(photos32, tmp_path)
    from PIL import Image
    Image.fromarray(photos64.train.images[0].permute(1, 2, 0).numpy()).save(tmp_path / 'train' / 'rocket' / '9999.png')
    with pytest.raises(DataError, match=r"image .*/train/rocket/9999.png is 64×64 but expected 32×32"):
        load_dataset('folder', tmp_path)


# --- corrupt or truncated files --------------------------------------------------------------------

def test_cifar_truncated(tmp_path, photos32):
    write_cifar10_pickles(photos32, tmp_path)
    path = tmp_path / CIFAR10_DIR / 'test_batch'
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch is corrupt or truncated"):
        load_dataset('cifar10', tmp_path)


def test_tiny_zip_truncated(tmp_path, photos64):
    write_tinyimagenet(photos64, tmp_path, as_zip=True)
    path = tmp_path / f'{TINY_DIR}.zip'
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"tiny-imagenet-200.zip is corrupt or truncated"):
        load_dataset('tinyimagenet', tmp_path)


def test_undecodable_image(tmp_path, photos64):
    write_tinyimagenet(photos64, tmp_path)
    bad = tmp_path / TINY_DIR / 'val' / 'images' / 'val_3.JPEG'
    bad.write_bytes(b'\xff\xd8 this is not a jpeg')
    with pytest.raises(DataError, match=r"cannot decode image val/images/val_3.JPEG"):
        load_dataset('tinyimagenet', tmp_path)


def test_medmnist_corrupt(tmp_path, photos64):
    path = write_medmnist_npz(photos64, tmp_path, 'pathmnist', 64)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"pathmnist_64.npz is corrupt or not a MedMNIST file"):
        load_dataset('pathmnist', tmp_path)


def test_medmnist_missing_key(tmp_path, photos64):
    path = medmnist_file(tmp_path, 'dermamnist', 64)
    np.savez(path, train_images=np.zeros((2, 64, 64, 3), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"dermamnist_64.npz is corrupt or not a MedMNIST file: KeyError"):
        load_dataset('dermamnist', tmp_path)


# --- labels out of range ------------------------------------------------------------------------

def test_cifar_label_out_of_range(tmp_path, photos32):
    labels = photos32.train.labels.clone(); labels[3] = 12
    write_cifar10_pickles(relabel(photos32, labels), tmp_path)
    with pytest.raises(DataError, match=r"cifar10 train split \(.*cifar-10-batches-py\): label 12 is out of range for 10 classes"):
        load_dataset('cifar10', tmp_path)


def test_medmnist_label_out_of_range(tmp_path, photos64):
    labels = photos64.train.labels.clone(); labels[0] = 8   # BloodMNIST has 8 classes: 0..7
    write_medmnist_npz(relabel(photos64, labels), tmp_path, 'bloodmnist', 64)
    with pytest.raises(DataError, match=r"bloodmnist_64 train split \(.*bloodmnist_64.npz\): label 8 is out of range for 8 classes"):
        load_dataset('bloodmnist', tmp_path)


def test_tiny_unknown_validation_label(tmp_path, photos64):
    write_tinyimagenet(photos64, tmp_path)
    ann = tmp_path / TINY_DIR / 'val' / 'val_annotations.txt'
    lines = ann.read_text().splitlines(keepends=True)
    file, _, *rest = lines[1].split('\t')
    lines[1] = '\t'.join([file, 'n99999999', *rest])
    ann.write_text(''.join(lines))
    with pytest.raises(DataError, match=r"val_annotations.txt line 2: label n99999999 is not in wnids.txt"):
        load_dataset('tinyimagenet', tmp_path)


# --- the cache ---------------------------------------------------------------------------------

def test_cache_round_trip_and_rebuild(tmp_path, photos32):
    write_cifar10_pickles(photos32, tmp_path)
    first = load_dataset('cifar10', tmp_path)
    cache = tmp_path / '.pmae-cache' / 'cifar10.pt'
    assert cache.is_file()
    cache.write_bytes(b'damaged')                        # a damaged cache is rebuilt, not trusted
    second = load_dataset('cifar10', tmp_path)
    assert torch.equal(first.train.images, second.train.images) and cache.stat().st_size > 1000
    third = load_dataset('cifar10', tmp_path, cache=False)
    assert torch.equal(first.eval.labels, third.eval.labels)


def test_tiny_from_zip_equals_tree(tmp_path, photos64):
    tree = load_dataset('tinyimagenet', write_tinyimagenet(photos64, tmp_path / 'a'))
    zipped = load_dataset('tinyimagenet', write_tinyimagenet(photos64, tmp_path / 'b', as_zip=True))
    assert torch.equal(tree.train.images, zipped.train.images) and tree.classes == zipped.classes
    assert zipfile.is_zipfile(tmp_path / 'b' / f'{TINY_DIR}.zip')
