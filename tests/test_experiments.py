"Experiment notebooks run headless through papermill: single runs, parameter checks, a resumable sweep, clean notebooks keep their tags."
import argparse, contextlib, csv, io, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from nasiam.cli import add_subcommands, run_subcommand
from nasiam.experiments import run_notebook, notebook_parameters, executed_parameters, error_outputs
from nasiam.results import read_results

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / 'nbs' / 'experiments'
NOTEBOOKS = ('search', 'pretrain', 'evaluate', 'quickstart')
# every notebook runs on CPU, on a tiny image folder (4 classes, 40 training images each), one epoch
TINY = dict(dataset='imagefolder', batch_size=32, knn_k=5, device='cpu')


def cli(*argv):
    p = argparse.ArgumentParser(prog='nasiam')
    add_subcommands(p.add_subparsers(dest='command', required=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = run_subcommand(p.parse_args([str(a) for a in argv]))
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def tiny_images(tmp_path_factory):
    "An ImageFolder tree of digits: train/ (40 per class) and test/ (10 per class), 4 classes."
    from PIL import Image
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp('tiny')
    d = load_digits()
    counts = {}
    for img, y in zip(d.images, d.target):
        if y >= 4: continue
        n = counts[y] = counts.get(y, 0) + 1
        if n > 50: continue
        split = 'train' if n <= 40 else 'test'
        (root / split / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype('uint8')).resize((32, 32)).save(root / split / str(y) / f'{n}.png')
    return root


def check_executed(nb_path, params):
    "The executed notebook holds the injected parameters and no error output."
    injected = executed_parameters(nb_path)
    for k, v in params.items(): assert injected[k] == v, (k, injected.get(k), v)
    assert error_outputs(nb_path) == []
    return injected


def test_every_notebook_has_one_literal_parameters_cell():
    for name in NOTEBOOKS:
        params = notebook_parameters(EXPERIMENTS / f'{name}.ipynb')
        assert 'out' in params and params['out'].startswith('runs/'), name
        if name != 'evaluate': assert params['live'] is False and params['dataset'] == 'digits', name
    assert (EXPERIMENTS / '.notest').is_file()


@pytest.fixture(scope='module')
def pretrained(tiny_images, tmp_path_factory):
    "pretrain.ipynb run through `nasiam run`, with a linear probe."
    out = tmp_path_factory.mktemp('runs') / 'pretrain'
    code, stdout, err = cli('run', EXPERIMENTS / 'pretrain.ipynb', '--out', out, '-p', 'data_dir', tiny_images, '-p', 'epochs', 1,
                            '-p', 'linear', 'true', '-p', 'linear_epochs', 2, *[a for k, v in TINY.items() for a in ('-p', k, v)])
    assert code == 0, err
    assert stdout.startswith('[cell 1/') and f"executed notebook: {out / 'pretrain.ipynb'}" in stdout.splitlines(), stdout  # progress, then the result
    assert any(l.strip().startswith('knn_top1:') for l in stdout.splitlines()), stdout
    return out


def test_pretrain_notebook(pretrained, tiny_images):
    out = pretrained
    check_executed(out / 'pretrain.ipynb', dict(TINY, data_dir=str(tiny_images), epochs=1, linear=True, out=str(out)))
    for name in ('metrics.jsonl', 'checkpoint.pt', 'config.json', 'report.html', 'results.json'): assert (out / name).is_file(), name
    res = json.loads((out / 'results.json').read_text())
    assert res['heads'] == 'standard' and 0 <= res['knn_top1'] <= res['knn_top5'] <= 100 and res['linear_top1'] is not None
    kinds = [json.loads(l)['kind'] for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert kinds.count('eval') == 2 and 'step' in kinds
    nb = (out / 'pretrain.ipynb').read_text()
    assert 'application/vnd.plotly.v1+json' in nb  # the static figures are shown at the end


def test_search_then_evaluate_notebooks(pretrained, tiny_images, tmp_path):
    s = tmp_path / 'search'
    params = dict(TINY, data_dir=str(tiny_images), epochs=1, out=str(s))
    run_notebook(EXPERIMENTS / 'search.ipynb', s, params)
    check_executed(s / 'search.ipynb', params)
    for name in ('genotype.json', 'metrics.jsonl', 'checkpoint.pt', 'report.html', 'results.json'): assert (s / name).is_file(), name
    res = json.loads((s / 'results.json').read_text())
    assert res['genotype'] and res['genotype_file'] == str(s / 'genotype.json') and res['knn_top1'] is not None
    assert 'alphas' in {json.loads(l)['kind'] for l in (s / 'metrics.jsonl').read_text().splitlines()}

    e = tmp_path / 'evaluate'
    params = dict(run=str(pretrained), linear_epochs=2, device='cpu')
    run_notebook(EXPERIMENTS / 'evaluate.ipynb', e, params)
    check_executed(e / 'evaluate.ipynb', dict(params, out=str(e)))
    res = json.loads((e / 'results.json').read_text())
    for k in ('knn_top1', 'linear_top1', 'random_init_knn_top1', 'random_init_linear_top1'): assert 0 <= res[k] <= 100, k


def test_quickstart_notebook(tiny_images, tmp_path):
    out = tmp_path / 'qs'
    params = dict(TINY, data_dir=str(tiny_images), search_epochs=1, arch_warmup_epochs=0, pretrain_epochs=1)
    run_notebook(EXPERIMENTS / 'quickstart.ipynb', out, params)
    check_executed(out / 'quickstart.ipynb', dict(params, out=str(out)))
    assert (out / 'search' / 'genotype.json').is_file() and (out / 'pretrain' / 'metrics.jsonl').is_file()
    res = json.loads((out / 'results.json').read_text())
    assert res['genotype'] and 0 <= res['knn_top1'] <= 100 and 0 <= res['random_init_knn_top1'] <= 100
    g = json.loads((out / 'search' / 'genotype.json').read_text())
    assert json.loads((out / 'pretrain' / 'config.json').read_text())['genotype'] == str(out / 'search' / 'genotype.json') and g
    text = (out / 'quickstart.ipynb').read_text()
    assert 'kNN top-1, random init' in text and 'application/vnd.plotly.v1+json' in text


def test_list_parameters():
    code, out, err = cli('run', '--list', EXPERIMENTS / 'search.ipynb')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("framework = 'simsiam'") and 'simsiam, moco, simclr or byol' in lines[0]
    assert any(l.startswith('epochs = 2') and 'an int' in l for l in lines)


@pytest.mark.parametrize('args, message', [
    (['-p', 'epoch', '3'], "search.ipynb parameter 'epoch' is not accepted; choose one of: framework,"),
    (['-p', 'epochs', 'three'], "epochs 'three' is not accepted; it takes an int (default 2)"),
    (['-p', 'live', 'maybe'], "live 'maybe' is not accepted; it takes a bool (true or false) (default False)"),
    (['-p', 'out', 'elsewhere'], "parameter 'out' is not accepted; the run directory is given with --out"),
])
def test_bad_parameters_exit_2_and_run_nothing(args, message, tmp_path):
    code, out, err = cli('run', EXPERIMENTS / 'search.ipynb', *args, '--out', tmp_path / 'r')
    assert code == 2 and out == ''
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / 'r').exists()


def test_bad_parameters_file(tmp_path):
    (tmp_path / 'p.yaml').write_text('epochs: 1.5\n')
    code, out, err = cli('run', EXPERIMENTS / 'search.ipynb', '-f', tmp_path / 'p.yaml', '--out', tmp_path / 'r')
    assert code == 2 and len(err.strip().splitlines()) == 1 and "epochs 1.5 is not accepted; it takes an int" in err, err
    assert not (tmp_path / 'r').exists()


def test_plain_papermill_cli(pretrained, tmp_path):
    "The notebooks need nothing but papermill itself."
    out = tmp_path / 'pm'
    out.mkdir()
    r = subprocess.run([str(Path(sys.executable).parent / 'papermill'), str(EXPERIMENTS / 'evaluate.ipynb'), str(out / 'evaluate.ipynb'),
                        '--cwd', str(EXPERIMENTS), '-k', 'python3', '-p', 'out', str(out), '-p', 'run', str(pretrained),
                        '-p', 'linear', 'False', '-p', 'baseline', 'False', '-p', 'device', 'cpu'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / 'results.json').read_text())['knn_top1'] >= 0 and error_outputs(out / 'evaluate.ipynb') == []


def test_nbdev_clean_keeps_parameters_tags(tmp_path):
    for name in NOTEBOOKS:
        nb = tmp_path / f'{name}.ipynb'
        shutil.copy(EXPERIMENTS / f'{name}.ipynb', nb)
        r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_clean'), '--fname', str(nb)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        cells = json.loads(nb.read_text())['cells']
        assert [c['metadata'].get('tags') for c in cells if c['metadata'].get('tags')] == [['parameters']], name


def test_nbdev_test_skips_experiment_notebooks():
    r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_test'), '--path', str(EXPERIMENTS / 'search.ipynb')],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and 'No files were eligible for testing' in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_sweep_resumes_after_a_kill(tmp_path):
    "2 frameworks x 2 seeds on digits: stopped after the first point, rerun, the first point is not redone."
    grid = tmp_path / 'grid.yaml'
    grid.write_text("framework: [simsiam, simclr]\nseed: [0, 1]\nepochs: 1\nbatch_size: 64\nval_fraction: 0.8\nknn_k: 20\ndevice: cpu\n")
    out = tmp_path / 'sweep'
    cmd = [sys.executable, '-c', 'import sys; from tests.test_experiments import cli; c, o, e = cli(*sys.argv[1:]); print(o); print(e, file=sys.stderr); sys.exit(c)',
           'sweep', str(EXPERIMENTS / 'search.ipynb'), '--grid', str(grid), '--out', str(out)]
    first = out / 'framework=simsiam,seed=0'
    # the first run stops abruptly (as if killed) once one point has finished
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, NASIAM_SWEEP_STOP_AFTER='1'))
    assert r.returncode == 75, r.stdout + r.stderr
    assert (first / 'done.json').is_file() and not (out / 'results.csv').exists()
    assert [p.name for p in out.glob('*/done.json')] == ['done.json']
    stamp = {f: (first / f).stat().st_mtime_ns for f in ('done.json', 'search.ipynb', 'metrics.jsonl')}

    r = subprocess.run(cmd + ['--jobs', '2'], cwd=REPO, capture_output=True, text=True)  # the rest, two at a time
    assert r.returncode == 0, r.stdout + r.stderr
    assert '4 points, 1 already finished, 3 to run' in r.stdout
    assert {f: (first / f).stat().st_mtime_ns for f in stamp} == stamp  # not redone
    rows = read_results(out / 'results.csv')
    assert len(rows) == 4 and all(r['status'] == 'done' for r in rows)
    assert [(r['framework'], r['seed']) for r in rows] == [('simsiam', 0), ('simsiam', 1), ('simclr', 0), ('simclr', 1)]
    assert all(0 <= r['knn_top1'] <= 100 for r in rows)
    for r in rows:
        check_executed(out / r['point'] / 'search.ipynb', dict(framework=r['framework'], seed=int(r['seed']), epochs=1))
    page = (out / 'summary.html').read_text()
    assert page.count('* plotly.js v') == 1 and 'std over seeds' in page and page.count('op weights at the end of each search') == 2


def test_sweep_records_a_failed_point_and_goes_on(tiny_images, tmp_path):
    grid = tmp_path / 'grid.yaml'
    grid.write_text(f"framework: [nope, simsiam]\nepochs: 1\ndata_dir: {tiny_images}\n" + ''.join(f'{k}: {v}\n' for k, v in TINY.items()))
    code, out, err = cli('sweep', EXPERIMENTS / 'pretrain.ipynb', '--grid', grid, '--out', tmp_path / 's')
    assert code == 1, err
    rows = read_results(tmp_path / 's' / 'results.csv')
    assert [r['status'] for r in rows] == ['failed', 'done']
    assert "framework 'nope' is not accepted" in rows[0]['error'] and (tmp_path / 's' / 'framework=nope' / 'error.txt').is_file()
    assert rows[1]['knn_top1'] >= 0 and (tmp_path / 's' / 'summary.html').is_file()


def test_sweep_checks_the_whole_grid_first(tmp_path):
    (tmp_path / 'grid.yaml').write_text("framework: [simsiam]\nseed: [0, one]\n")
    code, out, err = cli('sweep', EXPERIMENTS / 'search.ipynb', '--grid', tmp_path / 'grid.yaml', '--out', tmp_path / 's')
    assert code == 2 and "seed 'one' is not accepted; it takes an int (default 0)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 's').exists()


def test_arms_are_paired_by_seed(tmp_path):
    "With one seed, every arm of the pretrain notebook gets the same backbone initialisation, data order and augmentation stream; another seed changes all three."
    import torch
    from nasiam.config import RunConfig
    from nasiam.data import load_dataset
    from nasiam.genotype import Genotype
    from nasiam.train import Run
    data = load_dataset('digits')
    g = Genotype.random(0, 'simsiam')
    control = Genotype(['identity'] * len(g.projector), ['identity'] * len(g.predictor))
    (tmp_path / 'control.json').write_text(control.to_json())
    arms = dict(standard=dict(heads='standard'), random=dict(heads='genotype', genotype='random:3'),
                preset=dict(heads='genotype', genotype='simsiam-cifar10-resnet18'),
                control=dict(heads='genotype', genotype=str(tmp_path / 'control.json'), options=dict(stop_gradient=False)))
    def first_steps(name, seed, kw):
        run = Run(RunConfig(mode='pretrain', framework='simsiam', dataset='digits', backbone='resnet_mini', batch_size=64, epochs=1,
                            seed=seed, device='cpu', knn_every=0, **kw), tmp_path / f'{name}{seed}', progress=False, data=data)
        backbone = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
        batches = [b.clone() for _, b in zip(range(3), run.data.weight_stream.epoch_batches())]
        views = [run.data.views(b) for b in batches]
        return backbone, batches, views
    ref = first_steps('reference', 5, arms['standard'])
    for name, kw in arms.items():
        got = first_steps(name, 5, kw)
        assert got[0].keys() == ref[0].keys() and all(torch.equal(got[0][k], ref[0][k]) for k in ref[0]), f"{name}: another backbone init"
        assert all(torch.equal(a, b) for a, b in zip(got[1], ref[1])), f"{name}: another data order"
        assert all(torch.equal(a, b) for va, vb in zip(got[2], ref[2]) for a, b in zip(va, vb)), f"{name}: another augmentation stream"
    other = first_steps('standard', 6, arms['standard'])  # the check can fail: another seed differs in all three
    k0 = next(k for k in ref[0] if k.endswith('weight'))
    assert not torch.equal(other[0][k0], ref[0][k0])
    assert not torch.equal(other[1][0], ref[1][0]) and not torch.equal(other[2][0][0], ref[2][0][0])
