"Can the search's answer be trusted: a held-out monitor that changes nothing, decision confidence, random genotypes, seed agreement."
import json, subprocess, sys
from pathlib import Path
import pytest
import torch
from conftest import cli
from nasiam.genotype import Genotype
from nasiam.train import load_checkpoint

FAST = ['--dataset', 'digits', '--backbone', 'resnet_mini', '--batch-size', '128', '--device', 'cpu', '--knn-k', '20', '--no-progress']
REPO = Path(__file__).resolve().parents[1]


def records(run, kind):
    return [r for r in map(json.loads, (Path(run) / 'metrics.jsonl').read_text().splitlines()) if r['kind'] == kind]


def test_held_out_monitor_changes_nothing(tmp_path):
    "1-epoch pretrains with the held-out kNN on and off end with bit-identical weights, buffers and optimiser state."
    runs = {}
    for every in (1, 0):
        out = tmp_path / f'knn{every}'
        code, _, err = cli('pretrain', '--standard', '--epochs', 1, '--knn-every', every, '--out', out, *FAST)
        assert code == 0, err
        runs[every] = load_checkpoint(out / 'checkpoint.pt')
    assert 'val_knn_top1' in records(tmp_path / 'knn1', 'epoch')[-1] and 'val_knn_top1' not in records(tmp_path / 'knn0', 'epoch')[-1]
    on, off = runs[1]['model'], runs[0]['model']
    assert on.keys() == off.keys()
    assert any('running_mean' in k for k in on)  # the BatchNorm statistics the monitor used to overwrite are compared too
    for k in on: assert torch.equal(on[k], off[k]), f'{k} differs with the monitor on'
    assert torch.equal(runs[1]['rng']['cpu'], runs[0]['rng']['cpu'])
    best = load_checkpoint(tmp_path / 'knn1' / 'best.pt')['model']
    for k in on: assert torch.equal(best[k], on[k]), k  # best.pt holds the training statistics, not the held-out images'


def test_search_reports_decisions(tmp_path):
    out = tmp_path / 's'
    code, stdout, err = cli('search', '--epochs', 3, '--arch-warmup-epochs', 1, '--decision-patience', 2, '--out', out, *FAST)
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    epochs = records(out, 'epoch')
    last = epochs[-1]
    assert [e['decided']['layers'] for e in epochs] == [10, 10, 10]
    assert res['decided'] == f"{last['decided']['decided']}/10" and res['undecided'] == last['decided']['undecided']
    g = Genotype.from_json((out / 'genotype.json').read_text())
    assert g.confidence['rule'] == dict(margin=0.03, patience=2, level=0.05, correction='holm', null='sign-flip', replays=1000)
    assert g.confidence['epoch'] == 3 and json.loads((out / 'genotype.json').read_text())['format'] == 'nasiam.genotype/3'
    assert all(0 < l['p_value'] <= 1 for c in ('projector', 'predictor') for l in g.confidence[c] if l['p_value'] is not None)
    assert g.undecided() == res['undecided']
    # the recorded margins are those of the final alphas
    alphas = load_checkpoint(out / 'checkpoint.pt')['model']['projector.cell.alphas'].softmax(-1)
    top = alphas.topk(2, -1).values
    assert [round(l['margin'], 6) for l in g.confidence['projector']] == [round(v, 6) for v in (top[:, 0] - top[:, 1]).tolist()]
    # warm-up: the alphas stay at zero through the first epoch
    assert all(e['margin'] == 0 and e['stable_epochs'] == 0 for e in epochs[0]['confidence']['projector'])
    if res['undecided']: assert 'undecided: ' in err and res['undecided'][0] in err


def test_pretrain_with_a_random_genotype(tmp_path):
    out = tmp_path / 'r'
    code, _, err = cli('pretrain', '--genotype', 'random:3', '--epochs', 1, '--out', out, *FAST)
    assert code == 0, err
    assert json.loads((out / 'config.json').read_text())['genotype'] == 'random:3'
    code, stdout, err = cli('evaluate', '--run', out, '--device', 'cpu')
    assert code == 0, err
    from nasiam.train import model_from_checkpoint
    from nasiam.frameworks import build_model
    keys = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    m = model_from_checkpoint(load_checkpoint(out / 'checkpoint.pt'))
    assert keys(m) == keys(build_model('simsiam', 'genotype', 'resnet_mini', Genotype.random(3, 'simsiam')))
    assert keys(m) != keys(build_model('simsiam', 'genotype', 'resnet_mini', Genotype.random(0, 'simsiam')))  # another draw, other heads
    code, _, err = cli('pretrain', '--genotype', 'random:three', '--epochs', 1, '--out', tmp_path / 'bad', *FAST)
    assert code == 2 and 'random:3' in err and not (tmp_path / 'bad').exists()


@pytest.mark.slow
def test_seed_sweep_reports_agreement(tmp_path):
    "A 3-seed sweep of the search notebook: one results.csv column per layer, the agreement in summary.html."
    from nasiam.results import read_results, seed_agreement, search_genotype
    from nasiam.sweeps import sweep
    grid = dict(seed=[0, 1, 2], epochs=1, arch_warmup_epochs=0, batch_size=128, evaluate=False, device='cpu', knn_k=20)
    res = sweep(REPO / 'nbs' / 'experiments' / 'search.ipynb', grid, tmp_path / 'sw', jobs=2, log=None)
    rows = read_results(res)
    assert [r['status'] for r in rows] == ['done'] * 3, rows
    layers = [f'projector.{i}' for i in range(6)] + [f'predictor.{i}' for i in range(4)]
    for r in rows:
        g = json.loads((tmp_path / 'sw' / r['point'] / 'genotype.json').read_text())
        assert [r[l] for l in layers] == [ops[0] for c in ('projector', 'predictor') for ops in g[c]]
        assert r['decided'].endswith('/10')
    page = (tmp_path / 'sw' / 'summary.html').read_text()
    assert 'Seed agreement of the search' in page
    agree = seed_agreement([search_genotype(tmp_path / 'sw' / r['point']) for r in rows])
    for a, l in zip(agree, layers):
        ops = [r[l] for r in rows]
        assert a['layer'] == l and a['modal_op'] in ops and a['share'] == max(map(ops.count, ops)) / 3
        assert f"<td>{l}</td><td>{a['modal_op']}</td><td>{a['share']:.0%}</td>" in page
