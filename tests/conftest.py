"""Fixtures several test files share.

`make test` runs the chapter notebooks once, as tests (`nbdev-test`), then `pytest tests`: this folder holds what does
not belong in a chapter, such as command-line, fault and bad-input tests. It executes no notebook: the figures a chapter
prints are checked by assertions in the chapter itself, so nbdev-test's run is the only one needed.

`bordered_digits` is a data set like many a user's (a constant black border, one pixel lit in only a handful of
images); `bordered_folder` is the same data set written as a folder of PNG files.
"""
import pytest
import torch.nn.functional as F

from pmae.data import ImageDataset, Split, load_digits_data, write_image_folder


@pytest.fixture(scope='session')
def bordered_digits() -> ImageDataset:
    "scikit-learn's digits padded with a black border to 16×16; border pixel (1, 1) is lit in 3 of the 1,438 training images."
    digits = load_digits_data()
    pad = lambda split: Split(F.pad(split.images, (4, 4, 4, 4)), split.labels)   # (N, 1, 16, 16) uint8
    train, ev = pad(digits.train), pad(digits.eval)
    train.images[:3, 0, 1, 1] = 255
    return ImageDataset('bordered digits', train, ev, digits.classes, 'test', 'digits padded with a black border')


@pytest.fixture(scope='session')
def bordered_folder(tmp_path_factory, bordered_digits):
    "`bordered_digits` written as `train/<class>/NNNN.png` and `test/<class>/NNNN.png`: a folder of grey PNG files."
    return write_image_folder(bordered_digits, tmp_path_factory.mktemp('bordered_digits'))
