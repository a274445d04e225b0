"""Unlabelled image folders: a search and a pretraining on a flat folder of generated JPEGs, without and with a
labelled --eval-dir for the held-out kNN, best.pt and the evaluation."""
import json
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from conftest import cli
from nasiam.records import read_metrics
from nasiam.rundata import UNLABELLED_NOTE, RunData
from nasiam.train import load_checkpoint

FLAGS = ['--dataset', 'imagefolder', '--image-size', '16', '--batch-size', '16', '--epochs', '1', '--device', 'cpu',
         '--precision', 'fp32', '--knn-k', '5', '--no-progress']


def jpeg(path: Path, rng, shade: float):
    h, w = (int(v) for v in rng.integers(18, 30, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), shade)], -1) + rng.normal(0, 10, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype('uint8')).save(path, quality=90)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "A flat folder of 48 JPEGs (no class folders), and a labelled tree of 2 classes to evaluate on."
    root, rng = tmp_path_factory.mktemp('unlabelled'), np.random.default_rng(0)
    for i in range(48): jpeg(root / 'flat' / f'img_{i:03d}.jpg', rng, 40.0 * (i % 5))
    for split, n in (('train', 16), ('test', 4)):
        for c, shade in (('dark', 20.0), ('light', 230.0)):
            for i in range(n): jpeg(root / 'labelled' / split / c / f'{i}.jpg', rng, shade)
    return root / 'flat', root / 'labelled'


def test_search_without_eval_dir_skips_the_measurements_in_one_line(folders, tmp_path):
    flat, _ = folders
    code, out, err = cli('search', *FLAGS, '--data-dir', flat, '--out', tmp_path / 'search')
    assert code == 0, err
    assert out.count(UNLABELLED_NOTE) == 1  # said once, when the data are loaded
    run = tmp_path / 'search'
    assert json.loads((run / 'config.json').read_text())['unlabelled'] is True  # found by itself: no class folders
    assert json.loads((run / 'genotype.json').read_text())['projector']
    records = read_metrics(run / 'metrics.jsonl')
    assert [r['message'] for r in records if r.get('event') == 'unlabelled'] == [UNLABELLED_NOTE]
    assert all('val_knn_top1' not in r for r in records if r['kind'] == 'epoch')
    best = load_checkpoint(run / 'best.pt')
    assert (best['epoch'], best['chosen_by']) == (1, 'last epoch (no labels)')
    code, out, err = cli('evaluate', '--run', run)
    assert code == 2 and err.count('\n') == 1 and 'needs a labelled eval_dir' in err


def test_pretrain_streamed_with_eval_dir_measures_on_it(folders, tmp_path):
    flat, labelled = folders
    run = tmp_path / 'pretrain'
    code, out, err = cli('pretrain', '--standard', *FLAGS, '--data-dir', flat, '--eval-dir', labelled, '--loader', 'stream',
                         '--loader-workers', '0', '--out', run)
    assert code == 0, err
    assert UNLABELLED_NOTE not in out
    records = read_metrics(run / 'metrics.jsonl')
    epochs = [r for r in records if r['kind'] == 'epoch']
    assert 0 <= epochs[-1]['val_knn_top1'] <= 100
    [fmap] = [r for r in records if r['kind'] == 'feature_map']  # drawn from the eval folder's held-out images, with its class names
    assert (fmap['classes'], fmap['points'], sorted(fmap['labels'])) == (['dark', 'light'], 4, [0, 0, 1, 1]), fmap
    assert load_checkpoint(run / 'best.pt')['val_knn_top1'] == epochs[-1]['val_knn_top1']
    code, out, err = cli('evaluate', '--run', run, '--k', '5')
    res = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and res['protocol'] == 'knn' and 0 <= res['top1'] <= 100 and res['top5'] == 100.0  # 2 classes: top-5 holds all


def test_pretrain_without_eval_dir_has_no_feature_map_and_says_so(folders, tmp_path):
    flat, _ = folders
    code, out, err = cli('pretrain', '--standard', *FLAGS, '--data-dir', flat, '--out', tmp_path / 'pretrain')
    assert code == 0, err
    assert out.count("feature map: none, the run's images carry no labels") == 1
    assert not any(r['kind'] == 'feature_map' for r in read_metrics(tmp_path / 'pretrain' / 'metrics.jsonl'))


def test_unlabelled_flag_ignores_the_class_folders(folders):
    _, labelled = folders
    d = RunData('imagefolder', labelled, 16, batch_size=4, searching=False, unlabelled=True, progress=False)
    assert (d.data.num_classes, len(d.data.train_images), d.held_out) == (0, 32, None)  # train/ only, test/ kept out
    labelled_run = RunData('imagefolder', labelled, 16, batch_size=4, searching=False, progress=False)
    assert labelled_run.held_out is labelled_run and labelled_run.data.num_classes == 2
