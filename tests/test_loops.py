"Search, pretrain and evaluate end to end on digits, through the command line, on CPU."
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from conftest import cli
from nasiam.genotype import Genotype
from nasiam.train import load_checkpoint

# half of digits' training set held out: 5 weight steps an epoch, enough to see every part work
FAST = ['--dataset', 'digits', '--backbone', 'resnet_mini', '--batch-size', '64', '--device', 'cpu',
        '--knn-k', '20', '--log-every', '1', '--no-progress', '--val-fraction', '0.5']
OPTIONS = {'moco': ['--option', 'queue_size=256'], 'simsiam': [], 'simclr': []}


def records(run, kind=None):
    recs = [json.loads(l) for l in (Path(run) / 'metrics.jsonl').read_text().splitlines()]
    return [r for r in recs if kind is None or r['kind'] == kind]


@pytest.mark.parametrize('framework', ['simsiam', 'moco', 'simclr'])
def test_search_pretrain_evaluate(framework, tmp_path):
    s = tmp_path / 'search'
    code, out, err = cli('search', '--framework', framework, '--epochs', 2, '--out', s, *FAST, *OPTIONS[framework])
    assert code == 0, err
    for name in ('metrics.jsonl', 'genotype.json', 'checkpoint.pt', 'config.json', 'best.pt'):
        assert (s / name).is_file(), name
    alphas = records(s, 'alphas')
    assert alphas[0]['cells']['projector'] != alphas[-1]['cells']['projector'], 'the alphas did not move'
    ck = load_checkpoint(s / 'checkpoint.pt')
    g = Genotype.from_json((s / 'genotype.json').read_text())
    final = ck['model']['projector.cell.alphas']
    assert g == Genotype.from_alphas(final, ck['model'].get('predictor.cell.alphas'))
    assert {r['kind'] for r in records(s)} >= {'config', 'step', 'alphas', 'epoch', 'event'}
    steps = [r for r in records(s, 'step') if 'z_std' in r]
    assert steps and all(k in steps[0] for k in ('z_erank', 'align', 'uniform', 'arch_loss', 'lr'))

    p = tmp_path / 'pretrain'
    code, out, err = cli('pretrain', '--framework', framework, '--genotype', s / 'genotype.json', '--epochs', 1, '--out', p, *FAST, *OPTIONS[framework])
    assert code == 0, err
    assert (p / 'checkpoint.pt').is_file() and not (p / 'genotype.json').exists()
    for protocol in ('knn', 'linear'):
        code, out, err = cli('evaluate', '--run', p, '--protocol', protocol, '--device', 'cpu', '--epochs', 3)
        assert code == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        assert res['protocol'] == protocol and 0 <= res['top1'] <= res['top5'] <= 100
    assert [r['protocol'] for r in records(p, 'eval')] == ['knn', 'linear']


def test_pretrain_standard_and_preset(tmp_path):
    code, _, err = cli('pretrain', '--framework', 'simsiam', '--standard', '--epochs', 1, '--out', tmp_path / 'std', *FAST)
    assert code == 0, err
    code, _, err = cli('pretrain', '--framework', 'moco', '--genotype', 'moco-cifar10-resnet18', '--epochs', 1,
                       '--out', tmp_path / 'preset', *FAST, '--option', 'queue_size=128')
    assert code == 0, err
    assert json.loads((tmp_path / 'preset' / 'config.json').read_text())['genotype'] == 'moco-cifar10-resnet18'


def test_refusals_leave_files_alone(tmp_path):
    run = tmp_path / 'run'
    assert cli('search', '--epochs', 1, '--out', run, *FAST)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for args, needle in [
        (('search', '--epochs', 1, '--out', run, *FAST), 'already holds a run'),
        (('search', '--framework', 'moco', '--epochs', 1, '--out', run, '--resume', *FAST), "framework='simsiam'"),
        (('search', '--framework', 'swav', '--out', run), "invalid choice: 'swav'"),
        (('pretrain', '--genotype', 'nope', '--out', run), 'neither a preset'),
        (('search', '--dataset', 'imagefolder', '--data-dir', tmp_path / 'missing', '--out', tmp_path / 'other', *FAST[2:]), 'missing'),
    ]:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (tmp_path / 'other').exists()


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    "A 2-process gloo search with the held-out kNN every epoch: rank 0 measures while rank 1 waits, and both finish with the same genotype and alphas."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone', '-m', 'nasiam',
           'search', '--epochs', '2', '--knn-every', '1', '--out', str(tmp_path / 'ddp'), *FAST]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(l) for l in p.stdout.splitlines() if l.startswith('{')]
    assert sorted(r['rank'] for r in results) == [0, 1]
    assert results[0]['genotype'] == results[1]['genotype'] and all(r['ranks_agree'] for r in results)
    end = records(tmp_path / 'ddp', 'event')[-1]
    assert end['event'] == 'end' and end['world_size'] == 2
    assert all('val_knn_top1' in e for e in records(tmp_path / 'ddp', 'epoch'))


def test_python_dash_m(tmp_path):
    p = subprocess.run([sys.executable, '-m', 'nasiam', 'search', '--help'], capture_output=True, text=True)
    assert p.returncode == 0 and '--framework' in p.stdout
