"The papers' evaluation protocols: the augmented linear probe and fine-tuning write top-1/top-5 into the run folder and leave the checkpoints alone; the online probe changes no backbone weight."
import hashlib, json
from pathlib import Path
import pytest
import torch
from conftest import cli
from nasiam.data import load_dataset
from nasiam.train import pretrain

KW = dict(dataset='digits', image_size=16, backbone='resnet_mini', epochs=1, batch_size=20, knn_k=5, precision='fp32', device='cpu', progress=False)


def _digits(n):
    d = load_dataset('digits', image_size=16)
    d.train_images, d.train_labels = d.train_images[:n], d.train_labels[:n]
    return d


def records(run, kind):
    return [r for r in map(json.loads, (Path(run) / 'metrics.jsonl').read_text().splitlines()) if r['kind'] == kind]


def _hashes(run):
    return {n: hashlib.sha256((Path(run) / n).read_bytes()).hexdigest() for n in ('checkpoint.pt', 'best.pt')}


@pytest.mark.slow
def test_augmented_probe_and_finetune(tmp_path):
    "linear-augmented for 2 epochs (its progress bar on stderr) and finetune for 1 (`--no-progress`): top-1/top-5 printed and logged to metrics.jsonl, checkpoints byte for byte as before."
    run = tmp_path / 'run'
    pretrain(out=run, data=_digits(100), **KW)
    before = _hashes(run)
    for protocol, epochs, quiet in (('linear-augmented', 2, ()), ('finetune', 1, ('--no-progress',))):
        code, out, err = cli('evaluate', '--run', run, '--protocol', protocol, '--epochs', epochs, '--batch-size', 128, '--device', 'cpu', *quiet)
        assert code == 0, err
        assert (f'{protocol}: 100%' in err and f'{epochs}/{epochs}' in err and 'loss=' in err) != bool(quiet), err  # the bar over the epochs, unless --no-progress
        res = json.loads(out.strip().splitlines()[-1])
        assert res['protocol'] == protocol and res['epochs'] == epochs and 0 <= res['top1'] <= res['top5'] <= 100, res
        assert res['lr'] == pytest.approx((30.0 if protocol == 'linear-augmented' else 0.1) * 128 / 256)
        logged = records(run, 'eval')[-1]
        assert logged['protocol'] == protocol and logged['top1'] == res['top1'] and logged['top5'] == res['top5']
    assert res['top1'] > 10  # fine-tuning learns something on digits (chance is 10%)
    assert _hashes(run) == before
    code, _, err = cli('evaluate', '--run', run, '--protocol', 'lars')
    assert code == 2 and "invalid choice: 'lars'" in err


def test_online_probe_changes_no_backbone_weight(tmp_path):
    "Pretraining with the online probe every step ends with the same weights and buffers as without it, and logs the probe's accuracy."
    weights = {}
    for every in (0, 1):
        out = tmp_path / f'probe{every}'
        res = pretrain(out=out, online_probe_every=every, knn_every=0, data=_digits(120), **KW)
        weights[every] = torch.load(out / 'checkpoint.pt', weights_only=True)['model']
    assert weights[0].keys() == weights[1].keys() and any('running_mean' in k for k in weights[1])
    for k in weights[0]: assert torch.equal(weights[0][k], weights[1][k]), f'{k} differs with the online probe on'
    epoch = records(tmp_path / 'probe1', 'epoch')[-1]
    assert 0 <= epoch['online_probe_top1'] <= epoch['online_probe_top5'] <= 100
    assert 'online_probe_top1' not in records(tmp_path / 'probe0', 'epoch')[-1]
    assert records(tmp_path / 'probe1', 'eval')[-1]['protocol'] == 'online-linear' and res['online_probe_top1'] == epoch['online_probe_top1']
    ck = torch.load(tmp_path / 'probe1' / 'checkpoint.pt', weights_only=True)
    assert 'head' in ck['hooks']['OnlineLinearProbe']  # the probe resumes with the run
