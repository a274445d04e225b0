"Beyond one process: sweeps through submitit (its local executor, and SLURM played by a few shell scripts), a search over two torchrun nodes on the loopback, and the streamed image folder's pieces."
import json, os, socket, subprocess, sys
import torch
from pathlib import Path
import pytest
from conftest import cli
from nasiam.experiments import read_results, sweep_status

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
        (('--executor', 'submitit-local', '--slurm-time', '0'), "argument --slurm-time: '0' must be a positive integer"),
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
@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
    "train/ (3 classes x 12) and test/ (3 x 2) JPEGs of varied sizes, from 24x40 to 61x33 px."
    import numpy as np
    from PIL import Image
    root, rng = tmp_path_factory.mktemp('jpegs'), np.random.default_rng(0)
    for split, n in (('train', 12), ('test', 2)):
        for c in ('ant', 'bee', 'cat'):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(24, 62)), int(rng.integers(24, 62))
                yy, xx = np.mgrid[0:h, 0:w]
                img = (np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 40.0 * ('ant', 'bee', 'cat').index(c))], -1) + rng.normal(0, 12, (h, w, 3)))
                Image.fromarray(img.clip(0, 255).astype('uint8')).save(root / split / c / f'{i:03d}.jpg', quality=90)
    return root


def collect(loader, n=None):
    it, out = iter(loader), []
    for batch in it:
        out.append(batch)
        if n is not None and len(out) == n: break
    return out


def test_stream_loader_order_crops_and_resume(jpeg_folder):
    "Two worker processes, random crops: the order is BatchStream's, the crops repeat for a seed, and a loader rebuilt from a mid-epoch state goes on with the same batches."
    from nasiam.data import scan_imagefolder, ImageFileDataset, stream_loader, BatchStream
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
    from nasiam.data import scan_imagefolder, ImageFileDataset, stream_loader
    files = scan_imagefolder(jpeg_folder, progress=False)
    ds = ImageFileDataset(files.train_files, files.train_labels, 8)
    shards = [torch.cat([b[2] for b in collect(stream_loader(ds, 4, rank=r, world_size=2, num_workers=1))]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 16 and not set(shards[0].tolist()) & set(shards[1].tolist())
    split = torch.arange(0, 36, 3)
    got = torch.cat([b[2] for b in collect(stream_loader(ds, 4, indices=split, num_workers=0))])
    assert sorted(got.tolist()) == split.tolist()


def test_stream_images_match_the_memory_path(jpeg_folder):
    "The centred squares the stream loader decodes are the images load_dataset holds in memory (up to resize rounding), with the same labels."
    from nasiam.data import scan_imagefolder, ImageFileDataset, load_dataset
    files, mem = scan_imagefolder(jpeg_folder, progress=False), load_dataset('imagefolder', jpeg_folder, image_size=16)
    assert files.classes == mem.classes and torch.equal(files.train_labels, mem.train_labels) and torch.equal(files.test_labels, mem.test_labels)
    for names, labels, images in ((files.train_files, files.train_labels, mem.train_images), (files.test_files, files.test_labels, mem.test_images)):
        ds = ImageFileDataset(names, labels, 16)
        streamed = torch.stack([ds[i][0] for i in range(len(ds))])
        assert streamed.dtype == torch.uint8 and streamed.shape == images.shape
        assert (streamed.float() - images.float()).abs().mean() < 4, (streamed.float() - images.float()).abs().mean()


def test_scan_shows_progress_and_refuses_like_load_dataset(jpeg_folder, tmp_path, capsys):
    from nasiam.data import scan_imagefolder, load_dataset
    files = scan_imagefolder(jpeg_folder)
    assert len(files.train_files) == 36 and len(files.test_files) == 6 and files.num_classes == 3
    err = capsys.readouterr().err
    assert 'scanning' in err and '6/6' in err and 'images=42' in err, err
    (tmp_path / 'train' / 'a').mkdir(parents=True); (tmp_path / 'test' / 'b').mkdir(parents=True)
    for bad in (tmp_path / 'nope', tmp_path / 'train', tmp_path):
        with pytest.raises(ValueError) as want: load_dataset('imagefolder', bad)
        with pytest.raises(ValueError) as got: scan_imagefolder(bad, progress=False)
        assert str(got.value) == str(want.value)


def test_choose_loader():
    from nasiam.data import choose_loader, decoded_bytes, memory_total
    assert decoded_bytes(1000, 224) == 150_528_000 and memory_total() > 2**28
    choice, why = choose_loader('auto', 1000, 224, budget_bytes=100_000_000)
    assert choice == 'stream' and why == 'auto chose stream: 1000 images of 224x224 px take 143.6 MiB decoded, over the budget of 95.4 MiB.'
    choice, why = choose_loader('auto', 1000, 32)
    assert choice == 'memory' and why.startswith('auto chose memory: 1000 images of 32x32 px take 2.9 MiB decoded, within the budget of') and '25% of' in why
    assert choose_loader('auto', 1000, 224, share=1e-6)[0] == 'stream'
    assert choose_loader('stream', 10, 32) == ('stream', 'the stream loader was asked for (10 images of 32x32 px take 30.0 KiB decoded).')
    with pytest.raises(ValueError, match="loader 'disk' is not known; choose memory, stream or auto"): choose_loader('disk', 10, 32)
