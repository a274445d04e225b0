"Exact resume after SIGKILL, crash-safe saves, the NaN guard, and one-line refusals that leave files alone."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import cli
from nasiam.genotype import Genotype
from nasiam.train import load_checkpoint

# half of digits' training set held out: 5 weight steps an epoch
RUN = ['--dataset', 'digits', '--backbone', 'resnet_mini', '--batch-size', '64', '--device', 'cpu',
       '--knn-k', '20', '--log-every', '1', '--no-progress', '--precision', 'fp32', '--val-fraction', '0.5']


class Proc(subprocess.Popen):
    "A `python -m nasiam` process whose output goes to files (a pipe nobody reads could block it)."
    def log(self): return Path(self.logfile).read_text()[-2000:]

def nasiam(*args, env=None):
    out = Path(args[args.index('--out') + 1]).with_suffix('.log') if '--out' in args else os.devnull
    p = Proc([sys.executable, '-m', 'nasiam', *map(str, args)], stdout=open(out, 'a'), stderr=subprocess.STDOUT,
             env={**os.environ, **(env or {})})
    p.logfile = out
    return p


def records(run):
    return [json.loads(l) for l in (Path(run) / 'metrics.jsonl').read_text().splitlines()]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def assert_same_state(a, b):
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    assert ka['step'] == kb['step'] and ka['epoch'] == kb['epoch']
    assert ka['model'].keys() == kb['model'].keys()
    for k in ka['model']: assert torch.equal(ka['model'][k], kb['model'][k]), k


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    args = ['search', '--framework', 'moco', '--option', 'queue_size=128', '--epochs', 2, '--checkpoint-every', 3, *RUN]
    whole = nasiam(*args, '--out', tmp_path / 'whole')
    killed = nasiam(*args, '--out', tmp_path / 'killed')
    ck = tmp_path / 'killed' / 'checkpoint.pt'
    deadline = time.time() + 900
    while not ck.exists() and killed.poll() is None and time.time() < deadline: time.sleep(0.05)
    assert killed.poll() is None, 'the run ended before its first checkpoint'
    killed.send_signal(signal.SIGKILL); killed.wait()
    assert load_checkpoint(ck)['step'] < 10, 'killed too late to test a resume'
    resumed = nasiam(*args, '--out', tmp_path / 'killed', '--resume')
    assert resumed.wait(timeout=900) == 0, resumed.log()
    assert whole.wait(timeout=900) == 0, whole.log()
    assert_same_state(tmp_path / 'whole' / 'checkpoint.pt', ck)
    g1, g2 = [Genotype.from_json((tmp_path / r / 'genotype.json').read_text()) for r in ('whole', 'killed')]
    assert g1 == g2
    recs = records(tmp_path / 'killed')
    assert [r['event'] for r in recs if r['kind'] == 'event'].count('resume') == 1
    steps = [r['step'] for r in recs if r['kind'] == 'step']
    assert len(steps) == len(set(steps)) == 10, 'a step is missing or logged twice'


@pytest.mark.slow
def test_kill_between_write_and_rename_keeps_previous_checkpoint(tmp_path):
    run = tmp_path / 'run'
    assert cli('search', '--epochs', 1, '--out', run, *RUN)[0] == 0
    before = load_checkpoint(run / 'checkpoint.pt')
    p = nasiam('search', '--epochs', 2, '--checkpoint-every', 2, '--out', run, '--resume', *RUN, env={'NASIAM_FAULT': 'before-rename'})
    assert p.wait(timeout=900) == -signal.SIGKILL, p.log()
    assert list(run.glob('.*.tmp')), 'the fault did not hit a save'
    after = load_checkpoint(run / 'checkpoint.pt')  # the previous checkpoint, whole
    assert after['step'] == before['step']
    for k in before['model']: assert torch.equal(before['model'][k], after['model'][k])
    assert cli('search', '--epochs', 2, '--out', run, '--resume', *RUN)[0] == 0  # and the run can go on
    assert not list(run.glob('.*.tmp')) and load_checkpoint(run / 'checkpoint.pt')['epoch'] == 2


@pytest.mark.parametrize('on_nan', ['stop', 'skip'])
def test_nan_guard(tmp_path, monkeypatch, on_nan):
    from nasiam.frameworks import SimSiam
    calls, forward = [0], SimSiam.forward
    def poisoned(self, *a, **kw):
        out = forward(self, *a, **kw)
        if kw.get('update_state', True):  # weight steps only (the architecture step passes update_state=False)
            calls[0] += 1
            if calls[0] == 8: out['loss'] = out['loss'] * float('nan')  # in the second epoch (5 steps each)
        return out
    monkeypatch.setattr(SimSiam, 'forward', poisoned)
    run = tmp_path / 'run'
    code, out, err = cli('search', '--epochs', 2, '--out', run, '--on-nan', on_nan, *RUN)
    nan = [r for r in records(run) if r.get('event') == 'nan']
    assert len(nan) == 1 and 'at step' in nan[0]['message']
    if on_nan == 'stop':
        assert code == 3 and len(err.strip().splitlines()) == 1 and 'non-finite' in err and 'step' in err
        assert load_checkpoint(run / 'checkpoint.pt')['epoch'] == 1  # the last good checkpoint is kept
    else:
        assert code == 0, err
        assert load_checkpoint(run / 'checkpoint.pt')['epoch'] == 2


def test_refusals(tmp_path):
    good = tmp_path / 'good'
    assert cli('search', '--epochs', 1, '--out', good, *RUN)[0] == 0
    moco = tmp_path / 'moco'
    assert cli('search', '--framework', 'moco', '--option', 'queue_size=64', '--epochs', 1, '--out', moco, *RUN)[0] == 0
    empty = tmp_path / 'empty'; (empty / 'train' / 'cat').mkdir(parents=True); (empty / 'test' / 'cat').mkdir(parents=True)
    bad_genotype = tmp_path / 'g.json'; bad_genotype.write_text(Genotype(['identity'] * 5, ['identity'] * 4).to_json())
    corrupt = tmp_path / 'corrupt'; shutil.copytree(good, corrupt)
    data = (corrupt / 'checkpoint.pt').read_bytes(); (corrupt / 'checkpoint.pt').write_bytes(data[:len(data) // 2])
    foreign = tmp_path / 'foreign'; shutil.copytree(good, foreign); shutil.copy(moco / 'checkpoint.pt', foreign / 'checkpoint.pt')
    cases = [
        (['search', '--dataset', 'imagefolder', '--data-dir', tmp_path / 'nowhere', '--out', tmp_path / 'new'], 'nowhere'),
        (['search', '--dataset', 'imagefolder', '--data-dir', empty, '--out', tmp_path / 'new'], 'empty'),
        (['search', '--dataset', 'mnist', '--out', tmp_path / 'new'], "invalid choice: 'mnist'"),
        (['search', '--framework', 'swav', '--out', tmp_path / 'new'], "invalid choice: 'swav'"),
        (['search', '--backbone', 'vgg16', '--out', tmp_path / 'new'], "invalid choice: 'vgg16'"),
        (['pretrain', '--genotype', 'simsiam-imagenet', '--out', tmp_path / 'new', *RUN], 'neither a preset'),
        (['pretrain', '--genotype', bad_genotype, '--out', tmp_path / 'new', *RUN], 'gives 5 projector layers but this projector has 6'),
        (['search', '--epochs', 1, '--out', good, *RUN], 'already holds a run'),
        (['search', '--epochs', 2, '--out', foreign, '--resume', *RUN], "framework='moco'"),
        (['search', '--epochs', 2, '--out', corrupt, '--resume', *RUN], 'corrupt'),
        (['evaluate', '--run', corrupt], 'corrupt'),
    ]
    saved = {d: snapshot(d) for d in (good, moco, corrupt, foreign)}
    for args, needle in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, (args, err)
    assert not (tmp_path / 'new').exists()
    assert {d: snapshot(d) for d in saved} == saved


def test_every_torch_load_is_weights_only():
    src = Path(__file__).resolve().parents[1] / 'nasiam'
    for f in src.glob('*.py'):
        for i, line in enumerate(f.read_text().splitlines()):
            if 'torch.load(' in line: assert 'weights_only=True' in line, f"{f.name}:{i + 1}"


def test_genotype_text_is_never_evaluated(tmp_path):
    marker = tmp_path / 'pwned'
    for text in [f"__import__('os').system('touch {marker}')",
                 f"Genotype(encoder=[[__import__('os').system('touch {marker}')]])",
                 f"Genotype(encoder=(lambda: open('{marker}', 'w'))())"]:
        with pytest.raises(ValueError): Genotype.from_original(text)
    assert not marker.exists()
