"""The batched augmentation against the torchvision per-image recipe, and dataset loading."""
import functools
import os
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from nasiam.data import DATASETS, load_dataset
from nasiam.augment import TwoViewAugment, torchvision_two_view_transform, torchvision_view_transform


def shared_subset() -> Path:
    "The cifar10-subset folder of the shared data (beside the repo, or $NASIAM_SHARED_DATA)."
    root = os.environ.get('NASIAM_SHARED_DATA')
    root = Path(root) if root else Path(__file__).resolve().parents[2] / 'shared/data'
    return root / 'cifar10-subset'


def _tinted_digits():
    "Four hundred digits, each tinted a random colour so that colour and grayscale show in the statistics."
    images = load_dataset('digits').train_images[:400]
    tint = 0.3 + 0.7 * torch.rand(len(images), 3, 1, 1, generator=torch.Generator().manual_seed(0))
    return (images.float() * tint).round().to(torch.uint8)

_TINTED = _tinted_digits()


@pytest.fixture
def tinted_digits(): return _TINTED


MEAN, STD = (0.15, 0.12, 0.1), (0.25, 0.2, 0.18)


def view_stats(views):
    "Per channel: pixel mean, pixel std, spread of image means over images, mean within-image std; and colourfulness."
    colour = (views[:, 0] * STD[0] + MEAN[0] - views[:, 1] * STD[1] - MEAN[1]).abs().mean()
    return torch.cat([views.mean((0, 2, 3)), views.std((0, 2, 3)), views.mean((2, 3)).std(0),
                      views.std((2, 3)).mean(0), colour.view(1) * 4])


@functools.lru_cache(maxsize=None)
def _reference_views(recipe, seed):
    return _torchvision_views(_TINTED, recipe, seed)


def torchvision_views(images, recipe, seed=0):
    "Views by the torchvision recipe (cached for the shared tinted digits)."
    return _reference_views(recipe, seed) if images is _TINTED else _torchvision_views(images, recipe, seed)


def _torchvision_views(images, recipe, seed, repeats=2):
    torch.manual_seed(seed)
    transform = torchvision_view_transform(32, MEAN, STD, recipe)
    pils = [TF.to_pil_image(x) for x in images]
    return torch.stack([transform(p) for _ in range(repeats) for p in pils])


def batched_views(images, recipe, repeats=2, seed=0, mean=MEAN, std=STD, **kw):
    aug, g = TwoViewAugment(32, mean, std, recipe, **kw), torch.Generator().manual_seed(seed)
    return torch.cat([aug.single(images, g) for _ in range(repeats)])


def stats_gap(images, recipe, **kw):
    return (view_stats(batched_views(images, recipe, **kw)) - view_stats(torchvision_views(images, recipe))).abs().max().item()


TOLERANCE = 0.06


@pytest.mark.parametrize('recipe', ['cifar', 'imagenet'])
def test_batched_statistics_match_torchvision(tinted_digits, recipe):
    gap = stats_gap(tinted_digits, recipe)
    assert gap < TOLERANCE, f"batched and torchvision views differ by {gap:.3f} in some statistic"


def test_statistics_tell_torchvision_seeds_apart_less_than_tolerance(tinted_digits):
    gap = (view_stats(torchvision_views(tinted_digits, 'cifar', seed=1))
           - view_stats(torchvision_views(tinted_digits, 'cifar', seed=2))).abs().max().item()
    assert gap < TOLERANCE / 2


@pytest.mark.parametrize('broken', [dict(jitter_p=0), dict(gray_p=0), dict(scale=(1, 1)), dict(mean=(0, 0, 0), std=(1, 1, 1))])
def test_statistics_catch_a_missing_piece(tinted_digits, broken):
    "The comparison has teeth: dropping one piece of the recipe moves some statistic beyond the tolerance."
    kw = dict(broken)
    mean, std = kw.pop('mean', MEAN), kw.pop('std', STD)
    views = batched_views(tinted_digits, 'cifar', mean=mean, std=std, **kw)
    gap = (view_stats(views) - view_stats(torchvision_views(tinted_digits, 'cifar'))).abs().max().item()
    assert gap > TOLERANCE, f"dropping {broken} went unnoticed (gap {gap:.3f})"


@pytest.mark.parametrize('jitter', [(0.4, 0, 0, 0), (0, 0.4, 0, 0), (0, 0, 0.4, 0), (0, 0, 0, 0.1), (0.4, 0.4, 0.4, 0.1)])
def test_colour_jitter_matches_torchvision(jitter):
    "Each jitter component alone, and all four in random order, change images as much as torchvision's ColorJitter."
    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = images.float() / 255
    torch.manual_seed(0)
    reference = T.ColorJitter(*jitter)
    tv_change = torch.stack([(reference(img) - img).abs().mean() for img in x])
    aug = TwoViewAugment(8, (0, 0, 0), (1, 1, 1), scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=1, jitter=jitter, gray_p=0)
    change = (aug.single(images, torch.Generator().manual_seed(0)) - x).abs().mean((1, 2, 3))
    assert abs(change.mean() / tv_change.mean() - 1) < 0.12, (change.mean(), tv_change.mean())
    assert abs(change.std() / tv_change.std() - 1) < 0.2, (change.std(), tv_change.std())


def ramp_images(n, size=32):
    "Red rises left to right, green top to bottom: a view's red and green ranges give its crop box and flip."
    ramp = torch.linspace(0, 255, size)
    img = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size), torch.full((size, size), 128.)])
    return img.round().to(torch.uint8).expand(n, 3, size, size).contiguous()


def crop_and_flip(views):
    "Fraction flipped and mean crop area measured on views in [0, 1]."
    red, green = views[:, 0], views[:, 1]
    flipped = red[:, :, 0].mean(1) > red[:, :, -1].mean(1)
    width = (red[:, :, -1] - red[:, :, 0]).abs().mean(1)
    height = (green[:, -1, :] - green[:, 0, :]).abs().mean(1)
    return flipped.float().mean().item(), (width * height).mean().item()


def test_crop_area_and_flip_rate_match_torchvision():
    images = ramp_images(1500)
    torch.manual_seed(0)
    reference = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    pil = TF.to_pil_image(images[0])
    tv_flip, tv_area = crop_and_flip(torch.stack([reference(pil) for _ in range(len(images))]))
    aug = TwoViewAugment(32, (0, 0, 0), (1, 1, 1), jitter_p=0, gray_p=0)
    flip, area = crop_and_flip(aug.single(images, torch.Generator().manual_seed(0)))
    assert abs(tv_flip - 0.5) < 0.05 and abs(flip - 0.5) < 0.05
    assert abs(area - tv_area) < 0.03, (area, tv_area)
    assert 0.4 < area < 0.65  # about the mean of U(0.2, 1), shrunk a little by pixel centres
    # and the measurement notices a wrong scale range
    _, wide = crop_and_flip(TwoViewAugment(32, (0, 0, 0), (1, 1, 1), scale=(0.5, 1), jitter_p=0, gray_p=0).single(images))
    assert wide - tv_area > 0.1


def test_two_view_transform_gives_two_different_views():
    pil = TF.to_pil_image(ramp_images(1)[0])
    a, b = torchvision_two_view_transform(32, MEAN, STD, 'imagenet')(pil)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match='mnist') as e: load_dataset('mnist')
    assert all(name in str(e.value) for name in DATASETS)


def test_missing_cifar_suggests_download(tmp_path):
    with pytest.raises(ValueError, match='download=True') as e: load_dataset('cifar10', data_dir=tmp_path)
    assert str(tmp_path / 'cifar10') in str(e.value)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match='does not exist'): load_dataset('imagefolder', data_dir=tmp_path / 'nope')
    with pytest.raises(ValueError, match='no train/ folder'): load_dataset('imagefolder', data_dir=tmp_path)
    (tmp_path / 'train/cat').mkdir(parents=True)
    with pytest.raises(ValueError, match='no test/ or val/'): load_dataset('imagefolder', data_dir=tmp_path)
    (tmp_path / 'val/cat').mkdir(parents=True)
    with pytest.raises(ValueError, match='holds no images') as e: load_dataset('imagefolder', data_dir=tmp_path)
    assert 'cat' in str(e.value)


def test_imagefolder_small_tree(tmp_path):
    "Non-square images are resized on the short side and centre-cropped; val/ stands in for test/."
    for split, n in (('train', 3), ('val', 1)):
        for c, colour in (('blue', (0, 0, 255)), ('red', (255, 0, 0))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n): TF.to_pil_image(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 20, 40).contiguous()).save(tmp_path / split / c / f'{i}.png')
    ds = load_dataset('imagefolder', data_dir=tmp_path, image_size=8)
    assert ds.train_images.shape == (6, 3, 8, 8) and ds.test_images.shape == (2, 3, 8, 8)
    assert ds.classes == ['blue', 'red'] and ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.train_images[3, 0].float().mean() > 250 and ds.train_images[0, 2].float().mean() > 250


def test_imagefolder_on_cifar10_subset():
    root = shared_subset()
    if not root.is_dir(): pytest.skip(f"shared CIFAR-10 subset not found at {root} (set NASIAM_SHARED_DATA)")
    ds = load_dataset('imagefolder', data_dir=root)
    assert ds.train_images.shape == (5000, 3, 32, 32) and ds.test_images.shape == (1000, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.classes[0] == 'airplane' and len(ds.classes) == 10
    assert torch.bincount(ds.train_labels).tolist() == [500] * 10
    # real photos: channel means close to CIFAR-10's
    means = ds.train_images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.03), means
