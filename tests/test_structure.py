"""The shape of the code: narrow interfaces around the loop, hooks with a contract, modules with one job, short cells."""
import ast, json
from pathlib import Path
import pytest
import torch
from conftest import REPO, cli
from nasiam.hooks import Hook
from nasiam.train import Run, RunConfig, load_checkpoint, NonFiniteLoss

BELOW_THE_LOOP = ('frameworks', 'strategies', 'hooks', 'data', 'augment', 'loaders', 'rundata', 'ops', 'optim', 'genotype',
                  'backbones', 'losses', 'evaluate', 'metrics')
FAST = dict(dataset='digits', backbone='resnet_mini', batch_size=64, knn_k=20, precision='fp32', device='cpu', val_fraction=0.5)


def _config_reads(path: Path) -> list[str]:
    "Where a module imports the config, or reads an attribute of a `config`/`cfg` object or of `run.c`/`self.c`."
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[-1] == 'config':
            found.append(f"{path.name}:{node.lineno}: imports {node.module}")
        if isinstance(node, ast.Attribute):
            v = node.value
            if isinstance(v, ast.Name) and v.id in ('config', 'cfg'): found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(v, ast.Attribute) and v.attr in ('c', 'config'): found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_below_the_loop_reads_a_run_config(tmp_path):
    "Frameworks, strategies, hooks, data and ops get their values by name; the check finds a planted read."
    files = [REPO / 'nasiam' / f"{m}.py" for m in BELOW_THE_LOOP]
    assert all(f.is_file() for f in files), [f.name for f in files if not f.is_file()]
    assert [r for f in files for r in _config_reads(f)] == []
    planted = tmp_path / 'planted.py'
    planted.write_text("from nasiam.config import RunConfig\ndef f(run, config):\n    return run.c.lr + config.arch_lr\n")
    assert len(_config_reads(planted)) == 3


def _run_functions(tree) -> list:
    "The methods of `Run` and the functions patched onto it (`def f(self:Run, ...)`)."
    fns = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == 'Run':
            fns += [n for n in node.body if isinstance(n, ast.FunctionDef)]
        if isinstance(node, ast.FunctionDef) and node.args.args and isinstance(node.args.args[0].annotation, ast.Name) \
                and node.args.args[0].annotation.id == 'Run':
            fns.append(node)
    return fns


def _data_branches(fns) -> list[str]:
    "Conditions in `fns` that look at the loader or the dataset."
    words = {'loader', 'dataset', 'imagefolder', 'memory', 'stream', 'dali', 'ImageFiles', 'ImageData'}
    found = []
    for fn in fns:
        for node in ast.walk(fn):
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                names = {getattr(n, 'attr', None) or getattr(n, 'id', None) or getattr(n, 'value', None) for n in ast.walk(node.test)}
                if names & words: found.append(f"{fn.name}:{node.lineno}: {ast.unparse(node.test)}")
    return found


def test_run_has_no_loader_or_dataset_branch():
    fns = _run_functions(ast.parse((REPO / 'nasiam' / 'train.py').read_text()))
    assert {'__init__', 'arch_step', 'weight_step', 'fit', 'state'} <= {f.name for f in fns}
    assert _data_branches(fns) == []
    planted = ast.parse("class Run:\n    def f(self):\n        if self.c.dataset == 'imagefolder': pass\n")
    assert len(_data_branches(_run_functions(planted))) == 1


class Greedy(Hook):
    "A hook whose state would replace the weights if states were merged into the checkpoint."
    def state_dict(self): return {'model': {'backbone.weight': torch.zeros(1)}, 'step': 10**6}


def test_a_hook_state_cannot_overwrite_the_weights(tmp_path):
    run = Run(RunConfig(mode='pretrain', heads='standard', epochs=1, knn_every=0, **FAST), tmp_path / 'run', progress=False, hooks=[Greedy()])
    run.fit()
    ck = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert ck['step'] == run.step and ck['hooks']['Greedy'] == Greedy().state_dict()
    assert ck['model'].keys() == run.model.state_dict().keys()
    for k, v in run.model.state_dict().items(): assert torch.equal(ck['model'][k], v), k


def test_an_old_format_checkpoint_resumes(tmp_path):
    "A checkpoint whose hook states sit at the top level (the format before `hooks`) continues and ends as the new one does."
    c = RunConfig(epochs=2, knn_every=1, **FAST)
    Run(RunConfig(**{**c.__dict__, 'epochs': 1}), tmp_path / 'new', progress=False).fit()
    ck = torch.load(tmp_path / 'new' / 'checkpoint.pt', weights_only=True)
    flat = {k: v for k, v in ck.items() if k != 'hooks'}
    for state in ck['hooks'].values(): flat.update(state)
    assert {'detector', 'decisions', 'confidence', 'best_val'} <= set(flat)
    import shutil
    shutil.copytree(tmp_path / 'new', tmp_path / 'old')
    torch.save(flat, tmp_path / 'old' / 'checkpoint.pt')
    runs = {name: Run(c, tmp_path / name, resume=True, progress=False) for name in ('new', 'old')}
    assert runs['old'].hooks[1].decisions.state_dict() == ck['hooks']['SearchMonitor']['decisions']
    assert runs['old'].hooks[2].best_val == ck['hooks']['HeldOutKNN']['best_val']
    results = {name: r.fit() for name, r in runs.items()}
    assert results['old']['genotype'] == results['new']['genotype'] and results['old']['decided'] == results['new']['decided']
    a, b = load_checkpoint(tmp_path / 'old' / 'checkpoint.pt'), load_checkpoint(tmp_path / 'new' / 'checkpoint.pt')
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k


@pytest.mark.parametrize('flag,value,needle', [('--lr', 'nan', 'lr nan is not accepted'), ('--lr', 'inf', 'lr inf is not accepted'),
                                               ('--arch-lr', '-1', 'arch_lr -1.0 is not accepted')])
def test_non_finite_or_negative_rates_are_refused_before_anything_is_written(tmp_path, flag, value, needle):
    code, out, err = cli('search', flag, value, '--out', tmp_path / 'run', '--epochs', 1, '--no-progress')
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / 'run').exists()


class PoisonAtTheEnd(Hook):
    "Makes a weight infinite after the run's last step."
    def after_step(self, run, step):
        if run.step == run.total_steps:
            with torch.no_grad(): next(run.model.parameters()).fill_(float('inf'))


def test_non_finite_weights_after_the_last_step_fail_the_run(tmp_path):
    run = Run(RunConfig(mode='pretrain', heads='standard', epochs=2, knn_every=0, **FAST), tmp_path / 'run', progress=False, hooks=[PoisonAtTheEnd()])
    with pytest.raises(NonFiniteLoss, match='non-finite weights'): run.fit()
    ck = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert ck['epoch'] == 1  # the last good checkpoint is kept
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    recs = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
    assert not any(r.get('event') == 'end' for r in recs) and any(r.get('event') == 'nan' for r in recs)


def test_modules_and_cells_are_short():
    "No module over 500 lines (the generated index aside), no export cell over 60 lines."
    long = {p.name: n for p in (REPO / 'nasiam').glob('*.py') if p.name != '_modidx.py' and (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
    cells = []
    for nb in (REPO / 'nbs').glob('*.ipynb'):
        for cell in json.loads(nb.read_text())['cells']:
            src = ''.join(cell['source'])
            if cell['cell_type'] == 'code' and src.startswith('#| export') and len(src.splitlines()) > 60:
                cells.append(f"{nb.name}:{cell.get('id')} ({len(src.splitlines())} lines)")
    assert cells == []
