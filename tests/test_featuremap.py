"""The feature map: a pretraining on labelled images ends with 2-D maps (PCA, t-SNE) of its held-out backbone features, which
its report draws; a search, a run with the map turned off and a run on unlabelled images write none."""
import dataclasses, re
import pytest
import torch

from nasiam.evaluate import feature_map
from nasiam.hooks import FeatureMap
from nasiam.records import read_metrics
from nasiam.train import Run, run_config

FAST = dict(dataset='digits', backbone='resnet_mini', batch_size=128, epochs=1, knn_k=20, precision='fp32', device='cpu', log_every=1)


@pytest.fixture(scope='module')
def small_digits():
    "300 digits to train on (30 of them held out), the test set as it is."
    from nasiam.data import load_dataset
    d = load_dataset('digits')
    return dataclasses.replace(d, train_images=d.train_images[:300], train_labels=d.train_labels[:300])


def test_separable_features_stay_separated_on_both_maps():
    "Ten tight clusters in 64-d: on either map a point's 5 nearest neighbours mostly share its label (chance: 10%)."
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(10, 64, generator=g), dim=1)
    y = torch.arange(10).repeat(40)
    m = feature_map(centres[y] + 0.05 * torch.randn(len(y), 64, generator=g), y, max_points=200, seed=3)
    assert m['pca'].shape == m['tsne'].shape == (200, 2) and torch.bincount(m['labels']).tolist() == [20] * 10
    for method, floor in (('pca', 60), ('tsne', 90)):
        c = torch.as_tensor(m[method])
        near = m['labels'][torch.cdist(c, c).fill_diagonal_(float('inf')).topk(5, largest=False).indices]
        assert (near.mode(1).values == m['labels']).float().mean() * 100 > floor, method
    x = centres[y] + 0.05 * torch.randn(len(y), 64, generator=g)
    a, b = feature_map(x, y, max_points=200, seed=3), feature_map(x, y, max_points=200, seed=3)
    assert (a['pca'] == b['pca']).all() and (a['tsne'] == b['tsne']).all() and torch.equal(a['rows'], m['rows'])  # seeded: the same map


def test_pretraining_writes_its_feature_map_and_its_report_draws_it(tmp_path, small_digits, capsys):
    run = Run(run_config('pretrain', **FAST, feature_map_points=20), tmp_path / 'run', progress=False, data=small_digits)
    run.fit()
    fmap = next(h for h in run.hooks if isinstance(h, FeatureMap))
    assert fmap.knn.kept[0] == run.step  # the held-out kNN's features of the final backbone, reused
    records = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
    maps = [r for r in records if r['kind'] == 'feature_map']
    assert len(maps) == 1
    m = maps[0]
    assert (m['points'], m['images'], m['split'], m['classes']) == (20, 30, 'val', [str(k) for k in range(10)])
    assert len(m['labels']) == len(m['pca']) == len(m['tsne']) == 20 and sorted(set(m['labels'])) == list(range(10))  # 2 per class
    assert all(round(v, 3) == v for xy in m['pca'] + m['tsne'] for v in xy)  # 3 decimals
    assert [r['kind'] for r in records].index('feature_map') < [r.get('event') for r in records].index('end')  # before the end record
    assert re.search(r'feature map: 20 held-out images, pca \d+\.\ds, tsne \d+\.\ds', capsys.readouterr().out)
    report = (tmp_path / 'run' / 'report.html').read_text()
    assert 'feature map: 20 of 30 held-out images (val), by label' in report and 't-SNE (perplexity 6.33)' in report


def test_no_feature_map_when_turned_off_or_searching(tmp_path, small_digits):
    run = Run(run_config('pretrain', **FAST, feature_map_points=0), tmp_path / 'off', progress=False, data=small_digits)
    run.fit()
    assert not any(isinstance(h, FeatureMap) for h in run.hooks)
    assert not any(r['kind'] == 'feature_map' for r in read_metrics(tmp_path / 'off' / 'metrics.jsonl'))
    search = Run(run_config('search', **FAST), tmp_path / 'search', progress=False, data=small_digits)
    search.writer.close()
    assert not any(isinstance(h, FeatureMap) for h in search.hooks)  # a search writes none
