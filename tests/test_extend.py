"""Variants: BYOL, the search strategies and TensorBoard through the command line; no framework branches left in the loop."""
import ast, json
from pathlib import Path
import pytest
import torch
from conftest import cli, REPO
from nasiam.frameworks import FRAMEWORKS
from nasiam.genotype import Genotype
from nasiam.train import load_checkpoint

FAST = ('--epochs', 1, '--batch-size', 128, '--knn-k', 20, '--log-every', 2, '--device', 'cpu', '--no-progress')


def test_byol_searches_and_pretrains_on_digits(tmp_path):
    code, out, err = cli('search', '--framework', 'byol', '--out', tmp_path / 's', *FAST)
    assert code == 0, err
    res = json.loads(out.splitlines()[-1])
    g = Genotype.from_json((tmp_path / 's' / 'genotype.json').read_text())
    assert (len(g.projector), len(g.predictor)) == FRAMEWORKS['byol'].search_layers == (6, 4)
    assert res['genotype'] == str(Genotype(g.projector, g.predictor, g.space))
    ck = load_checkpoint(tmp_path / 's' / 'checkpoint.pt')
    assert any(k.startswith('target.') for k in ck['model'])  # the momentum target network is saved
    code, out, err = cli('pretrain', '--framework', 'byol', '--genotype', tmp_path / 's' / 'genotype.json', '--out', tmp_path / 'p', *FAST)
    assert code == 0, err
    code, out, err = cli('evaluate', '--run', tmp_path / 'p', '--k', 20, '--device', 'cpu')
    assert code == 0, err
    assert 0 < json.loads(out)['top1'] <= 100
    cfg = json.loads((tmp_path / 'p' / 'config.json').read_text())
    assert (cfg['lr'], cfg['weight_decay']) == (1.0, 1e-5)  # BYOL's recipe (LARS) filled in


@pytest.mark.parametrize('strategy', ['darts2', 'gdas'])
def test_strategies_search_end_to_end(strategy, tmp_path):
    "darts2 and gdas write what darts1 writes: a genotype with per-layer confidence, alphas that moved, a report."
    code, out, err = cli('search', '--strategy', strategy, '--arch-lr', 0.1, '--out', tmp_path / strategy, *FAST)
    assert code == 0, err
    g = Genotype.from_json((tmp_path / strategy / 'genotype.json').read_text())
    assert len(g.confidence['projector']) == 6 and len(g.confidence['predictor']) == 4
    recs = [json.loads(l) for l in open(tmp_path / strategy / 'metrics.jsonl')]
    alphas = [r for r in recs if r['kind'] == 'alphas']
    assert alphas[0]['cells']['projector'] != alphas[-1]['cells']['projector']
    assert any(r['kind'] == 'event' and f"strategy {strategy}" in r.get('message', '') for r in recs)
    assert (tmp_path / strategy / 'report.html').is_file()


def test_tensorboard_event_files_load_in_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    code, out, err = cli('search', '--tensorboard', '--out', tmp_path / 'tb', *FAST)
    assert code == 0, err
    files = list((tmp_path / 'tb' / 'tensorboard').glob('events.out.tfevents.*'))
    assert files
    acc = EventAccumulator(str(tmp_path / 'tb' / 'tensorboard')); acc.Reload()
    scalars, tensors = set(acc.Tags()['scalars']), set(acc.Tags()['tensors'])
    assert {'step/loss', 'step/lr', 'step/arch_loss', 'epoch/loss', 'epoch/val_knn_top1'} <= scalars, scalars
    assert {f"alphas/projector/{i}/{op}" for i in range(6) for op in ('identity', 'linear_relu')} <= scalars
    assert 'alphas/predictor/3/linear_elu' in scalars
    assert any(t.startswith('genotype') for t in tensors), tensors
    loss = [e.value for e in acc.Scalars('step/loss')]
    recorded = [r['loss'] for r in map(json.loads, open(tmp_path / 'tb' / 'metrics.jsonl')) if r['kind'] == 'step']
    assert loss == pytest.approx(recorded)  # the same numbers as metrics.jsonl


def _framework_branches(path: Path) -> list[str]:
    "Comparisons against a framework's name (`framework == 'moco'`, `name in ('simsiam', ...)`) in a source file."
    names = set(FRAMEWORKS)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            consts = [c for c in [node.left, *node.comparators] for c in ([c] if isinstance(c, ast.Constant) else getattr(c, 'elts', []))]
            if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_branch_on_a_framework_name_outside_the_framework_classes():
    "The loop, its hooks, the strategies and the CLI read everything from the registry; the check finds a planted branch."
    files = [REPO / 'nasiam' / f for f in ('train.py', 'hooks.py', 'strategies.py', 'cli.py', 'optim.py', 'genotype.py')]
    assert [b for f in files for b in _framework_branches(f)] == []
    planted = REPO / 'tests' / '_planted.py'
    try:
        planted.write_text("def f(c):\n    return 1 if c.framework == 'moco' else 2\n")
        assert len(_framework_branches(planted)) == 1
    finally: planted.unlink()
