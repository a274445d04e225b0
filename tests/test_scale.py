"Beyond one process: sweeps through submitit (its local executor, and SLURM played by a few shell scripts), a search over two torchrun nodes on the loopback, and the streamed image folder's pieces."
import json, os, signal, socket, subprocess, sys, time
import torch
from pathlib import Path
import pytest
from conftest import cli
from nasiam.results import read_results
from nasiam.sweeps import sweep_status

REPO = Path(__file__).resolve().parents[1]


def tiny_notebook(folder):
    "A notebook that writes results.json with y = 2x; x = 3 makes it fail, x = 4 kills the process that runs it."
    cells = [("x = 1\nout = 'runs/x'\n", ['parameters']),
             ("import json, os, pathlib, signal\nassert x != 3, 'x=3 is refused'\n"
              "if x == 4: os.kill(os.getppid(), signal.SIGKILL)  # the job itself dies, as a cluster's kill would do\n"
              "pathlib.Path(out, 'results.json').write_text(json.dumps(dict(y=2 * x)))", [])]
    nb = dict(nbformat=4, nbformat_minor=5, metadata=dict(kernelspec=dict(name='python3', display_name='python3', language='python')),
              cells=[dict(cell_type='code', metadata=dict(tags=t), source=s, outputs=[], execution_count=None, id=f'c{i}')
                     for i, (s, t) in enumerate(cells)])
    path = Path(folder) / 'tiny.ipynb'
    path.write_text(json.dumps(nb))
    return path


def grid(folder, text):
    (Path(folder) / 'grid.yaml').write_text(text)
    return Path(folder) / 'grid.yaml'


# -- sweeps through submitit --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    "Two points as submitit local jobs: results.csv, each point's status.json and job id, --status; a rerun skips them and records a failed and a killed point."
    nb, out = tiny_notebook(tmp_path), tmp_path / 'sweep'
    code, stdout, err = cli('sweep', nb, '--grid', grid(tmp_path, 'x: [1, 2]\n'), '--out', out, '--executor', 'submitit-local', '--jobs', '2', '-q')
    assert code == 0, err
    assert '2 points, 0 already finished, 2 to run' in stdout and '(2 done, 0 failed)' in stdout, stdout
    rows = read_results(out / 'results.csv')
    assert [(r['point'], r['status'], r['y']) for r in rows] == [('x=1', 'done', 2.0), ('x=2', 'done', 4.0)]
    jobs = json.loads((out / 'jobs.json').read_text())
    for name in ('x=1', 'x=2'):
        st = json.loads((out / name / 'status.json').read_text())
        assert st['state'] == 'done' and st['executor'] == 'submitit-local' and st['job_id'] == jobs[name], st
        assert st['queued'] <= st['started'] <= st['finished'] and st['pid'] != os.getpid()  # ran in the job's process
        assert (out / '.submitit' / f"{jobs[name]}_0_log.out").is_file()

    code, stdout, err = cli('sweep', '--status', out)
    assert code == 0 and err == ''
    lines = stdout.splitlines()
    assert lines[0].split() == ['point', 'state', 'job', 'host', 'started', 'seconds', 'error']
    assert [l.split()[:3] for l in lines[1:3]] == [['x=1', 'done', jobs['x=1']], ['x=2', 'done', jobs['x=2']]]
    assert lines[-1] == '2 points: 2 done'

    stamp = (out / 'x=1' / 'done.json').stat().st_mtime_ns
    code, stdout, err = cli('sweep', nb, '--grid', grid(tmp_path, 'x: [1, 2, 3, 4]\n'), '--out', out, '--executor', 'submitit-local', '--jobs', '2', '-q')
    assert code == 1 and '4 points, 2 already finished, 2 to run' in stdout, stdout + err
    assert (out / 'x=1' / 'done.json').stat().st_mtime_ns == stamp
    rows = {r['point']: r for r in read_results(out / 'results.csv')}
    assert [rows[p]['status'] for p in ('x=1', 'x=2', 'x=3', 'x=4')] == ['done', 'done', 'failed', 'failed']
    assert 'AssertionError: x=3 is refused' in rows['x=3']['error'] and (out / 'x=3' / 'error.txt').is_file()
    killed = json.loads((out / 'x=4' / 'status.json').read_text())
    assert killed['state'] == 'failed' and killed['error'].startswith(f"job {killed['job_id']} ended without a result"), killed
    assert rows['x=4']['error'] == killed['error'] and (out / 'x=4' / 'error.txt').is_file()
    assert [r['state'] for r in sweep_status(out)] == ['done', 'done', 'failed', 'failed']


FAKE_SBATCH = r"""#!/bin/bash
# sbatch played locally: keep the script, answer with a job id, then run the array's tasks one after the other
script="${@: -1}"
cp "$script" "$FAKE_SLURM/script.sh"; echo "$@" > "$FAKE_SLURM/args"
range=$(sed -n 's/^#SBATCH --array=\([0-9]*\)-\([0-9]*\).*/\1 \2/p' "$script")
(
  sleep 1  # submitit names its files after the job id once sbatch has answered
  if [ -n "$range" ]; then
    for i in $(seq $range); do
      SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i SLURM_JOB_ID=$((4300 + i)) SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 \
        SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_CPUS_PER_TASK=1 bash "$script"
    done
  else
    SLURM_JOB_ID=4242 SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 bash "$script"
  fi
) > "$FAKE_SLURM/tasks.log" 2>&1 &
echo "Submitted batch job 4242"
"""
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do case "$1" in --output|--error) shift 2;; *) shift;; esac; done
exec "$@"
"""
FAKE_SACCT = "#!/bin/sh\necho 'JobID|State|NodeList'\n"


def fake_slurm(folder):
    "A bin folder with sbatch, srun and sacct that run the jobs here."
    bin = Path(folder) / 'bin'; bin.mkdir()
    for name, text in (('sbatch', FAKE_SBATCH), ('srun', FAKE_SRUN), ('sacct', FAKE_SACCT)):
        (bin / name).write_text(text); (bin / name).chmod(0o755)
    return bin


def test_slurm_job_array(tmp_path, monkeypatch):
    "--executor slurm: one job array with the partition, GPUs, time limit, parallelism and extra sbatch options asked for; each task runs its point."
    nb, out = tiny_notebook(tmp_path), tmp_path / 'sweep'
    monkeypatch.setenv('PATH', f"{fake_slurm(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv('FAKE_SLURM', str(tmp_path))
    code, stdout, err = cli('sweep', nb, '--grid', grid(tmp_path, 'x: [1, 2]\n'), '--out', out, '--executor', 'slurm',
                            '--slurm-partition', 'debug', '--slurm-gpus-per-job', '2', '--slurm-time', '30', '--slurm-array-parallelism', '1',
                            '--slurm-extra', 'constraint=a100', '--slurm-extra', 'exclusive', '-q')
    assert code == 0, err + (tmp_path / 'tasks.log').read_text()
    assert 'submitted 2 points as SLURM job array 4242' in stdout, stdout
    script = (tmp_path / 'script.sh').read_text()
    for line in ('--array=0-1%1', '--partition=debug', '--gpus-per-node=2', '--time=30', '--constraint=a100', '--exclusive', '--job-name=nasiam-sweep'):
        assert f'#SBATCH {line}\n' in script, (line, script)
    assert [(r['status'], r['y']) for r in read_results(out / 'results.csv')] == [('done', 2.0), ('done', 4.0)]
    assert json.loads((out / 'jobs.json').read_text()) == {'x=1': '4242_0', 'x=2': '4242_1'}
    assert [(r['state'], r['job']) for r in sweep_status(out)] == [('done', '4242_0'), ('done', '4242_1')]


def test_sweep_refusals(tmp_path, monkeypatch):
    "Bad executors and options: one line, exit 2, nothing written."
    nb, g, out = tiny_notebook(tmp_path), grid(tmp_path, 'x: [1, 2]\n'), tmp_path / 'sweep'
    monkeypatch.setenv('PATH', str(tmp_path / 'nothing-here'))
    for args, needle in [
        (('--executor', 'slurm'), "--executor slurm needs SLURM's sbatch and srun on PATH and they were not found"),
        (('--slurm-partition', 'gpu'), '--slurm-partition applies to --executor slurm or submitit-local, not to the local executor'),
        (('--executor', 'submitit-local', '--slurm-extra', '=1'), "--slurm-extra '=1' is not NAME=VALUE"),
        (('--executor', 'submitit-local', '--slurm-time', '0'), "argument --slurm-time: value 0 is not accepted; it must be an integer of at least 1"),
        (('--executor', 'cloud'), "argument --executor: invalid choice: 'cloud'"),
    ]:
        code, stdout, err = cli('sweep', nb, '--grid', g, '--out', out, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (args, err)
        assert not out.exists()
    for args, needle in [
        (('--status', tmp_path / 'nowhere'), 'does not exist'),
        (('--status', tmp_path), 'holds no sweep'),
        ((nb, '--status', tmp_path), 'runs nothing; give it without a notebook'),
        ((nb, '--out', out), 'nasiam sweep needs a NOTEBOOK, --grid GRID.yaml and --out DIR'),
    ]:
        code, stdout, err = cli('sweep', *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (args, err)


# -- two nodes -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_the_loopback(tmp_path):
    "torchrun --nnodes 2 twice, node ranks 0 and 1, one process each, meeting at 127.0.0.1: one search, the same genotype on both nodes; only node 0 writes its run."
    port, env = free_port(), dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    if Path('/sys/class/net/lo').exists(): env['GLOO_SOCKET_IFNAME'] = 'lo'  # the processes talk over the loopback only
    procs = []
    try:
        for rank in (0, 1):
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc-per-node', '1', '--node-rank', str(rank),
                   '--master-addr', '127.0.0.1', '--master-port', str(port),
                   '-m', 'nasiam', 'search', '--dataset', 'digits', '--backbone', 'resnet_mini', '--batch-size', '64', '--epochs', '1',
                   '--device', 'cpu', '--knn-k', '20', '--val-fraction', '0.5', '--no-progress', '--out', str(tmp_path / f'node{rank}')]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env))
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
    for p, (stdout, stderr) in zip(procs, outs): assert p.returncode == 0, stderr[-3000:]
    results = [json.loads(l) for stdout, _ in outs for l in stdout.splitlines() if l.startswith('{')]
    assert [r['rank'] for r in results] == [0, 1]
    assert results[0]['genotype'] == results[1]['genotype'] and all(r['ranks_agree'] for r in results)
    assert json.loads((tmp_path / 'node0' / 'genotype.json').read_text())
    end = [json.loads(l) for l in (tmp_path / 'node0' / 'metrics.jsonl').read_text().splitlines() if '"event"' in l][-1]
    assert end['event'] == 'end' and end['world_size'] == 2
    assert not (tmp_path / 'node1').exists()


# -- streamed image folders -----------------------------------------------------------------------------------------
def make_jpegs(root, n_train:int, n_test:int, seed:int=0):
    "train/ and test/ of 3 classes (ant, bee, cat) with n_train and n_test JPEGs each, gradients plus noise, from 24x24 to 61x61 px."
    import numpy as np
    from PIL import Image
    root, rng = Path(root), np.random.default_rng(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        for c in ('ant', 'bee', 'cat'):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(24, 62)), int(rng.integers(24, 62))
                yy, xx = np.mgrid[0:h, 0:w]
                img = (np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 40.0 * ('ant', 'bee', 'cat').index(c))], -1) + rng.normal(0, 12, (h, w, 3)))
                Image.fromarray(img.clip(0, 255).astype('uint8')).save(root / split / c / f'{i:04d}.jpg', quality=90)
    return root


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
    "train/ (3 classes x 12) and test/ (3 x 2) JPEGs of varied sizes, from 24x40 to 61x33 px."
    return make_jpegs(tmp_path_factory.mktemp('jpegs'), 12, 2)


def collect(loader, n=None):
    it, out = iter(loader), []
    for batch in it:
        out.append(batch)
        if n is not None and len(out) == n: break
    return out


def test_stream_loader_order_crops_and_resume(jpeg_folder):
    "Two worker processes, random crops: the order is BatchStream's, the crops repeat for a seed, and a loader rebuilt from a mid-epoch state goes on with the same batches."
    from nasiam.loaders import scan_imagefolder, ImageFileDataset, stream_loader, BatchStream
    files = scan_imagefolder(jpeg_folder, progress=False)
    ds = ImageFileDataset(files.train_files, files.train_labels, 16, crop='random', seed=5)
    make = lambda **kw: stream_loader(ds, 5, seed=7, num_workers=2, **kw)
    ref = make()
    epochs = [collect(ref), collect(ref)]
    assert len(epochs[0]) == len(epochs[1]) == 7 and ref.state_dict() == dict(epoch=2, position=0)
    images, labels, idx = epochs[0][0]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16) and labels.dtype == idx.dtype == torch.int64
    assert torch.equal(labels, files.train_labels[idx])
    order = BatchStream(36, 5, seed=7)
    for e in range(2): assert torch.equal(torch.cat([b[2] for b in epochs[e]]), torch.cat(list(order.epoch_batches())))
    # an image's crop depends on the epoch: index 0 in epoch 0 and in epoch 1
    where = lambda e: [(b, int((bt[2] == 0).nonzero()[0])) for b, bt in enumerate(epochs[e]) if (bt[2] == 0).any()][0]
    (b0, r0), (b1, r1) = where(0), where(1)
    assert not torch.equal(epochs[0][b0][0][r0], epochs[1][b1][0][r1])

    run = make()
    collect(run); collect(run, 3)  # epoch 0, then 3 batches of epoch 1: the workers have fetched further
    state = run.state_dict()
    assert state == dict(epoch=1, position=3)
    resumed = make(); resumed.load_state_dict(state)
    rest = collect(resumed)
    assert len(rest) == 4
    for got, want in zip(rest, epochs[1][3:]):
        for g, w in zip(got, want): assert torch.equal(g, w)
    assert [int(b[2][0]) for b in collect(make())] == [int(b[2][0]) for b in epochs[0]]  # and a fresh loader repeats epoch 0


def test_stream_loader_shards_and_splits(jpeg_folder):
    "Ranks take disjoint shards; `indices` restricts a loader to a split."
    from nasiam.loaders import scan_imagefolder, ImageFileDataset, stream_loader
    files = scan_imagefolder(jpeg_folder, progress=False)
    ds = ImageFileDataset(files.train_files, files.train_labels, 8)
    shards = [torch.cat([b[2] for b in collect(stream_loader(ds, 4, rank=r, world_size=2, num_workers=1))]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 16 and not set(shards[0].tolist()) & set(shards[1].tolist())
    split = torch.arange(0, 36, 3)
    got = torch.cat([b[2] for b in collect(stream_loader(ds, 4, indices=split, num_workers=0))])
    assert sorted(got.tolist()) == split.tolist()


def test_stream_images_match_the_memory_path(jpeg_folder):
    "The centred squares the stream loader decodes are the images load_dataset holds in memory (up to resize rounding), with the same labels."
    from nasiam.data import load_dataset
    from nasiam.loaders import scan_imagefolder, ImageFileDataset
    files, mem = scan_imagefolder(jpeg_folder, progress=False), load_dataset('imagefolder', jpeg_folder, image_size=16)
    assert files.classes == mem.classes and torch.equal(files.train_labels, mem.train_labels) and torch.equal(files.test_labels, mem.test_labels)
    for names, labels, images in ((files.train_files, files.train_labels, mem.train_images), (files.test_files, files.test_labels, mem.test_images)):
        ds = ImageFileDataset(names, labels, 16)
        streamed = torch.stack([ds[i][0] for i in range(len(ds))])
        assert streamed.dtype == torch.uint8 and streamed.shape == images.shape
        assert (streamed.float() - images.float()).abs().mean() < 4, (streamed.float() - images.float()).abs().mean()


def test_scan_shows_progress_and_refuses_like_load_dataset(jpeg_folder, tmp_path, capsys):
    from nasiam.data import load_dataset
    from nasiam.loaders import scan_imagefolder
    files = scan_imagefolder(jpeg_folder, delay=0)
    assert len(files.train_files) == 36 and len(files.test_files) == 6 and files.num_classes == 3
    err = capsys.readouterr().err
    assert 'scanning' in err and '6/6' in err and 'images=42' in err, err
    (tmp_path / 'train' / 'a').mkdir(parents=True); (tmp_path / 'test' / 'b').mkdir(parents=True)
    for bad in (tmp_path / 'nope', tmp_path / 'train', tmp_path):
        with pytest.raises(ValueError) as want: load_dataset('imagefolder', bad)
        with pytest.raises(ValueError) as got: scan_imagefolder(bad, progress=False)
        assert str(got.value) == str(want.value)


def test_choose_loader():
    from nasiam.loaders import choose_loader, decoded_bytes, memory_total
    assert decoded_bytes(1000, 224) == 150_528_000 and memory_total() > 2**28
    choice, why = choose_loader('auto', 1000, 224, budget_bytes=100_000_000)
    assert choice == 'stream' and why == 'auto chose stream: 1000 images of 224x224 px take 143.6 MiB decoded, over the budget of 95.4 MiB.'
    choice, why = choose_loader('auto', 1000, 32)
    assert choice == 'memory' and why.startswith('auto chose memory: 1000 images of 32x32 px take 2.9 MiB decoded, within the budget of') and '25% of' in why
    assert choose_loader('auto', 1000, 224, share=1e-6)[0] == 'stream'
    assert choose_loader('stream', 10, 32) == ('stream', 'the stream loader was asked for (10 images of 32x32 px take 30.0 KiB decoded).')
    with pytest.raises(ValueError, match="loader 'disk' is not accepted; choose one of: memory, stream, dali, auto"): choose_loader('disk', 10, 32)


# -- the run with a streamed folder -------------------------------------------------------------------------------------
THREADS = dict(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def records(run):
    return [json.loads(l) for l in (Path(run) / 'metrics.jsonl').read_text().splitlines()]


def _tree_pss(pid) -> int:
    "Proportional set size of a process and all its descendants, in bytes (shared pages split between them)."
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            todo += [int(c) for t in os.listdir(f'/proc/{p}/task') for c in Path(f'/proc/{p}/task/{t}/children').read_text().split()]
            total += next(int(l.split()[1]) * 1024 for l in Path(f'/proc/{p}/smaps_rollup').read_text().splitlines() if l.startswith('Pss:'))
        except (OSError, StopIteration, ValueError): pass
    return total


def peak_memory(args, cwd) -> dict:
    "Run `python -m nasiam ARGS` in a subprocess: its exit code, output, the peak RSS of its largest process, the run's or a worker's (wait4: exact), and the sampled peak PSS of its process tree."
    log = Path(cwd) / f"{Path(args[args.index('--out') + 1]).name}.log"
    with open(log, 'w') as out:
        p = subprocess.Popen([sys.executable, '-m', 'nasiam', *map(str, args)], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                             env={**os.environ, **THREADS})
        peak_pss, deadline = 0, time.time() + 600
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)  # this child's own rusage: its peak and its reaped workers'
            if pid: break
            peak_pss = max(peak_pss, _tree_pss(p.pid))
            if time.time() > deadline: p.kill()
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    return dict(code=p.returncode, log=log.read_text(), rss=usage.ru_maxrss * 1024, pss=peak_pss)


@pytest.mark.slow
@pytest.mark.skipif(not Path('/proc/self/smaps_rollup').exists(), reason='measures memory through /proc (Linux)')
def test_stream_run_stays_under_the_memory_budget(tmp_path):
    """A folder whose decoded images (2,007 at 128 px: 94 MiB) exceed a 0.06 GB budget: auto streams it, and a 1-epoch search with the held-out kNN
    peaks under the budget plus the peak of the same command on a small folder (456 images, streamed), which is the fixed overhead:
    the interpreter, torch, the model, the steps and the report, the loader workers and their prefetched batches at the same batch size."""
    from nasiam.loaders import decoded_bytes
    budget_gb = 0.06
    big, small = make_jpegs(tmp_path / 'big', 667, 2), make_jpegs(tmp_path / 'small', 150, 2)
    assert decoded_bytes(3 * 669, 128) > budget_gb * 1e9 * 1.5  # the memory path would have to hold more than the budget
    common = ['search', '--dataset', 'imagefolder', '--image-size', '128', '--backbone', 'resnet_mini', '--batch-size', '32',
              '--epochs', '1', '--train-portion', '0.1', '--knn-every', '1', '--knn-k', '20', '--device', 'cpu', '--precision', 'fp32',
              '--loader-workers', '1', '--no-progress']
    base = peak_memory([*common, '--data-dir', small, '--loader', 'stream', '--out', tmp_path / 'small-run'], tmp_path)
    assert base['code'] == 0, base['log'][-2000:]
    got = peak_memory([*common, '--data-dir', big, '--loader', 'auto', '--memory-budget-gb', budget_gb, '--out', tmp_path / 'big-run'], tmp_path)
    assert got['code'] == 0, got['log'][-2000:]
    assert 'loader: auto chose stream: 2007 images of 128x128 px take 94.1 MiB decoded, over the budget of 57.2 MiB.' in got['log'], got['log'][:500]
    assert [(r['loader'], r['message'][:17]) for r in records(tmp_path / 'big-run') if r.get('event') == 'loader'] == [('stream', 'auto chose stream')]
    assert any('val_knn_top1' in r for r in records(tmp_path / 'big-run') if r['kind'] == 'epoch')
    mib = lambda b: f"{b / 2**20:.0f} MiB"
    figures = (f"peak RSS {mib(got['rss'])} (small folder {mib(base['rss'])}), peak PSS of the tree {mib(got['pss'])} "
               f"(small folder {mib(base['pss'])}), budget {mib(budget_gb * 1e9)}")
    print(figures)
    # the exact peak of each process (the run and its workers) is what is held to the budget; the tree's PSS is sampled every 50 ms and
    # swings by tens of MiB with the moments the evaluation workers are alive, so it is reported, not asserted
    assert got['rss'] < base['rss'] + budget_gb * 1e9, figures


STREAM_RUN = ['--dataset', 'imagefolder', '--loader', 'stream', '--loader-workers', '1', '--image-size', '72', '--backbone', 'resnet_mini',
              '--batch-size', '16', '--val-fraction', '0.2', '--device', 'cpu', '--precision', 'fp32', '--knn-k', '20', '--log-every', '1',
              '--no-progress']


def nasiam_process(*args, cwd):
    out = Path(cwd) / f"{Path(args[args.index('--out') + 1]).name}.log"
    p = subprocess.Popen([sys.executable, '-m', 'nasiam', *map(str, args)], stdout=open(out, 'a'), stderr=subprocess.STDOUT, cwd=cwd,
                         env={**os.environ, **THREADS})
    p.logfile = out
    return p


def test_stream_sigkill_mid_epoch_then_resume_is_identical(tmp_path):
    "The 72 px recipe streamed (crops cut in the workers): SIGKILL after a mid-epoch checkpoint, --resume: the same genotype and alphas, bit for bit, as a run never stopped."
    from nasiam.genotype import Genotype
    from nasiam.train import load_checkpoint
    folder = make_jpegs(tmp_path / 'photos', 60, 2)  # 180 images: 144 fit, 72 weight, 4 steps an epoch
    args = ['search', '--data-dir', folder, '--epochs', '2', '--checkpoint-every', '3', '--knn-every', '0', *STREAM_RUN]
    whole = nasiam_process(*args, '--out', tmp_path / 'whole', cwd=tmp_path)
    killed = nasiam_process(*args, '--out', tmp_path / 'killed', cwd=tmp_path)
    ck = tmp_path / 'killed' / 'checkpoint.pt'
    deadline = time.time() + 600
    while not ck.exists() and killed.poll() is None and time.time() < deadline: time.sleep(0.01)
    assert killed.poll() is None, 'the run ended before its first checkpoint: ' + Path(killed.logfile).read_text()[-2000:]
    killed.send_signal(signal.SIGKILL); killed.wait()
    state = load_checkpoint(ck)
    assert state['loader'] == 'stream' and state['step'] < 8, 'killed too late to test a resume'
    assert state['weight_stream']['position'] % 4 != 0 and state['arch_stream']['position'] > 0, state['weight_stream']  # mid-epoch
    resumed = nasiam_process(*args, '--out', tmp_path / 'killed', '--resume', cwd=tmp_path)
    assert resumed.wait(timeout=600) == 0, Path(resumed.logfile).read_text()[-2000:]
    assert whole.wait(timeout=600) == 0, Path(whole.logfile).read_text()[-2000:]
    g1, g2 = [Genotype.from_json((tmp_path / r / 'genotype.json').read_text()) for r in ('whole', 'killed')]
    assert g1.projector == g2.projector and g1.predictor == g2.predictor
    a, b = load_checkpoint(tmp_path / 'whole' / 'checkpoint.pt'), load_checkpoint(ck)
    assert a['step'] == b['step'] == 8
    alphas = [k for k in a['model'] if k.endswith('alphas')]
    assert alphas and all(torch.equal(a['model'][k], b['model'][k]) for k in alphas)
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])  # and every weight
    recs = records(tmp_path / 'killed')
    assert [r['event'] for r in recs if r['kind'] == 'event'].count('resume') == 1
    steps = [r['step'] for r in recs if r['kind'] == 'step']
    assert len(steps) == len(set(steps)) == 8, 'a step is missing or logged twice'


def _run(tmp_path, folder, name, **kw):
    from nasiam.train import Run, RunConfig
    c = RunConfig(dataset='imagefolder', data_dir=str(folder), backbone='resnet_mini', batch_size=4, knn_every=0, device='cpu',
                  precision='fp32', loader_workers=0, **kw)
    return Run(c, tmp_path / name, progress=False)


def test_stream_and_memory_feed_the_loop_the_same_images(jpeg_folder, tmp_path, capsys):
    """Up to 64 px the two loaders give the loop the same batches in the same order: the same indices and labels, images equal up to
    the resize's rounding (torchvision decodes and resizes in the workers, PIL in memory), so the same augmented views; the held-out
    images too. Above 64 px the workers cut two crops and the device augmentation skips its own."""
    mem, streamed = (_run(tmp_path, jpeg_folder, name, loader=name, image_size=16).data for name in ('memory', 'stream'))
    assert (mem.loader, streamed.loader) == ('memory', 'stream') and 'loader: the stream loader was asked for' in capsys.readouterr().out
    assert streamed.images is None and not hasattr(streamed.data, 'train_images')  # nothing decoded up front
    for name in ('fit_idx', 'val_idx', 'weight_idx', 'arch_idx'): assert torch.equal(getattr(mem, name), getattr(streamed, name)), name
    for m_stream, s_stream in ((mem.weight_stream, streamed.weight_stream), (mem.arch_stream, streamed.arch_stream)):
        m_batches, s_batches = list(m_stream.epoch_batches()), list(s_stream.epoch_batches())
        assert len(m_batches) == len(s_batches) > 0
        for idx, (images, labels, indices) in zip(m_batches, s_batches):
            assert torch.equal(idx, indices) and torch.equal(labels, mem.data.train_labels[idx])
            a, b = mem.batch_images(idx), streamed.batch_images((images, labels, indices))
            assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
            assert (a.float() - b.float()).abs().mean() < 4
            v_mem, v_stream = mem.views(idx), streamed.views((images, labels, indices))  # same generator seed: the same draws
            assert all((x - y).abs().mean() < 0.1 for x, y in zip(v_mem, v_stream))
    held = torch.cat([b[0] for b in streamed.eval_images(streamed.val_idx)])
    assert (held.float() - mem.eval_images(mem.val_idx).float()).abs().mean() < 4

    big_run = _run(tmp_path, jpeg_folder, 'stream72', loader='stream', image_size=72, framework='moco', options={'queue_size': 64})
    big = big_run.data
    images, labels, indices = next(iter(big.weight_stream.epoch_batches()))
    assert images.shape == (4, 2, 3, 72, 72) and images.dtype == torch.uint8  # two crops per image, from the workers
    v1, v2 = big.views((images, labels, indices))
    assert v1.shape == v2.shape == (4, 3, 72, 72) and v1.dtype == torch.float32
    assert (big_run.c.lr, big_run.c.weight_decay, big_run.c.options['momentum'], big_run.c.options['queue_size']) == (0.05, 1e-4, 0.999, 64)
    held = next(iter(big.eval_images(big.val_idx)))[0]
    assert held.shape[1:] == (3, 72, 72)  # ImageNet's centre crop, 224/256 of the shorter side


def test_evaluate_a_streamed_run(jpeg_folder, tmp_path):
    "evaluate --protocol linear on a run that streamed: centred crops read in batches, 90 epochs by default above 64 px."
    run = tmp_path / 'run'
    code, out, err = cli('search', '--data-dir', jpeg_folder, '--epochs', '1', '--out', run, *STREAM_RUN, '--batch-size', '8', '--knn-every', '0')
    assert code == 0, err
    code, out, err = cli('evaluate', '--run', run, '--protocol', 'linear', '--device', 'cpu')
    assert code == 0, err
    res = json.loads(out.splitlines()[-1])
    assert res['protocol'] == 'linear' and 0 <= res['top1'] <= 100
    from nasiam.train import evaluate_run
    import nasiam.train as train
    seen = {}
    probe = train.linear_probe
    def spy(*a, **kw): seen.update(kw); return probe(*a, **kw)
    train.linear_probe = spy
    try: evaluate_run(run, 'linear', device='cpu')
    finally: train.linear_probe = probe
    assert seen['epochs'] == 90


def test_loader_refusals(jpeg_folder, tmp_path):
    "Loaders that cannot serve: one line, exit 2, nothing written."
    from nasiam.loaders import dali_available
    out = tmp_path / 'run'
    cases = [(('--dataset', 'digits', '--loader', 'stream'), "loader 'stream' reads image folders only, and dataset 'digits' is held in memory"),
             (('--dataset', 'imagefolder', '--data-dir', jpeg_folder, '--memory-budget-gb', '0'), 'memory_budget_gb 0.0 is not accepted; it must be a finite number above 0'),
             (('--dataset', 'imagefolder', '--data-dir', jpeg_folder, '--loader-workers', '-1'), 'loader_workers -1 is not accepted; it must be an integer of at least 0'),
             (('--dataset', 'digits', '--loader', 'disk'), "argument --loader: invalid choice: 'disk'")]
    if not dali_available():
        cases.append((('--dataset', 'imagefolder', '--data-dir', jpeg_folder, '--loader', 'dali'), 'pip install nasiam[dali]'))
    elif not torch.cuda.is_available():
        cases.append((('--dataset', 'imagefolder', '--data-dir', jpeg_folder, '--loader', 'dali', '--device', 'cpu'), 'CUDA device'))
    for args, needle in cases:
        code, stdout, err = cli('search', *args, '--out', out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (args, err)
        assert not out.exists()


def test_dali_loader(jpeg_folder, tmp_path):
    "--loader dali where DALI and CUDA are: the order is BatchStream's, two crops a photo at 72 px, a resumable state, and a search through it."
    from nasiam.loaders import dali_available, DaliLoader, scan_imagefolder, BatchStream
    if not dali_available(): pytest.skip('NVIDIA DALI is not installed (pip install nasiam[dali])')
    if not torch.cuda.is_available(): pytest.skip('DALI decodes on a CUDA device and there is none here')
    files = scan_imagefolder(jpeg_folder, progress=False)
    dl = DaliLoader(files.train_files, files.train_labels, 72, 6, seed=3, views=2)
    batches = list(dl)
    assert len(batches) == 6 and dl.state_dict() == dict(epoch=1, position=0)
    images, labels, idx = batches[0]
    assert images.shape == (6, 2, 3, 72, 72) and images.dtype == torch.uint8 and images.is_cuda and torch.equal(labels, files.train_labels[idx])
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.cat(list(BatchStream(36, 6, seed=3).epoch_batches())))
    code, out, err = cli('search', '--data-dir', jpeg_folder, '--epochs', '1', '--out', tmp_path / 'run', *STREAM_RUN, '--loader', 'dali', '--device', 'cuda')
    assert code == 0, err
    assert [r['loader'] for r in records(tmp_path / 'run') if r.get('event') == 'loader'] == ['dali']
