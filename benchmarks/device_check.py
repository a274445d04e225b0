"""The one-shot device check: what to run, in at most 8 minutes, the first time nasiam gets a CUDA GPU (no internet needed).

    python benchmarks/device_check.py [--out device_check.json] [--dry-run] [--data ../shared/data/cifar10-subset]
    python benchmarks/device_check.py --requirements > wheels.txt   # the wheels to bring (see benchmarks/README.md)

Stages, each with its own time limit, each recorded whether it passes or fails (a failure does not stop the others):
environment, wheels (the project's requirements importable here), benchmark (benchmarks/run.py --quick on CUDA: the
ceiling, the steps with their fraction of it, compile), search_pretrain (a short ResNet-18 SimSiam search and
pretraining on the CIFAR-10 subset in bf16, eager and compiled), mixed_layer (fused against reference), dali (the DALI
loader, if importable), dashboard (the live-dashboard overhead at GPU step rates), ddp (one 2-process step, with 2 GPUs).

`--dry-run` (on a machine without a GPU): runs the stages that need none (environment, wheels, mixed_layer on the CPU,
dali's import check) and says, for each CUDA stage, what it would do. Writes one JSON file (format in benchmarks/README.md).
"""
import argparse, configparser, datetime, importlib.metadata as md, json, os, platform, re, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT = 1  # the version of the output's format
ON_THE_MACHINE = ('torch', 'torchvision')  # a CUDA machine has these (matched to its CUDA); they are not brought as wheels
IMPORT_NAMES = {'scikit-learn': 'sklearn', 'pyyaml': 'yaml'}


def requirements(extras=()) -> list[str]:
    "The project's requirement specifiers (settings.ini `requirements`, plus `<extra>_requirements`), those on the machine excepted."
    ini = configparser.ConfigParser(); ini.read(ROOT / 'settings.ini')
    s = ini['DEFAULT']
    reqs = s.get('requirements', '').split() + [r for e in extras for r in s.get(f'{e}_requirements', '').split()]
    return [r for r in reqs if _name(r) not in ON_THE_MACHINE]

def _name(req: str) -> str: return re.split(r'[<>=!~ ;\[]', req, maxsplit=1)[0].lower()


def stage_environment(ctx) -> dict:
    import torch
    cpu = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), platform.processor()) \
        if Path('/proc/cpuinfo').exists() else platform.processor()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return dict(python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                gpus=gpus, cpu=cpu, cores=os.cpu_count(), bf16=bool(gpus) and torch.cuda.is_bf16_supported(),
                data=ctx['data'], data_present=(Path(ctx['data']) / 'train').is_dir())

def stage_wheels(ctx) -> dict:
    "Each requirement: installed here (version) or missing; missing ones fail the stage."
    found, missing = {}, []
    for req in requirements(('tensorboard',)):
        try: found[req] = md.version(_name(req))
        except md.PackageNotFoundError: missing.append(req)
    if missing: raise RuntimeError(f"missing: {' '.join(missing)}; install them offline as benchmarks/README.md says")
    return dict(requirements=list(found), installed=found)

def _python(args: list, limit: float) -> dict:
    "Run this Python on `args` in the repository (stdout JSON when it prints one), within `limit` seconds."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    if p.returncode: raise RuntimeError(f"exit {p.returncode}: {p.stderr[-2000:]}")
    try: return json.loads(p.stdout)
    except ValueError: return dict(stdout=p.stdout[-4000:])

def stage_benchmark(ctx) -> dict:
    return _python(['benchmarks/run.py', '--quick', '--json', '--device', 'cuda', '--only', 'peak', '--only', 'steps', '--only', 'compile',
                    '--only', 'fused'], ctx['limit'])

def stage_search_pretrain(ctx) -> dict:
    from nasiam.train import search, pretrain
    out, res = Path(ctx['tmp']), {}
    common = dict(dataset='imagefolder', data_dir=ctx['data'], image_size=32, backbone='resnet18', framework='simsiam', epochs=1,
                  batch_size=256, precision='bf16', device='cuda', knn_every=0, progress=False, force=True)
    for compiled in (False, True):
        name = 'compiled' if compiled else 'eager'
        for mode, fn in (('search', search), ('pretrain', pretrain)):
            t = time.perf_counter()
            r = fn(out=out / f'{mode}-{name}', compile=compiled, **common)
            steps = r['steps']
            res[f'{mode}_{name}'] = dict(seconds=time.perf_counter() - t, steps=steps, genotype=r.get('genotype'),
                                         last_loss=_last_loss(out / f'{mode}-{name}'))
    return res

def _last_loss(run: Path):
    lines = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return next((r['loss'] for r in reversed(lines) if r.get('kind') == 'step'), None)

def stage_mixed_layer(ctx) -> dict:
    "The fused mixed layers against the reference: the same outputs and gradients, and their times."
    import copy, torch
    from nasiam.ops import SearchCell, set_fused
    dev = torch.device(ctx['device'])
    torch.manual_seed(0)
    ref = SearchCell([512] * 7, fused=False).to(dev); fus = set_fused(copy.deepcopy(ref), True)
    x = torch.randn(512 if dev.type == 'cuda' else 32, 512, device=dev)
    out, times = {}, {}
    for name, cell in (('reference', ref), ('fused', fus)):
        cell(x).square().mean().backward()  # warm-up
        cell.zero_grad()
        if dev.type == 'cuda': torch.cuda.synchronize()
        t = time.perf_counter(); y = cell(x); y.square().mean().backward()
        if dev.type == 'cuda': torch.cuda.synchronize()
        times[name], out[name] = time.perf_counter() - t, (y.detach(), [p.grad.clone() for p in cell.parameters() if p.grad is not None])
    diff = (out['reference'][0] - out['fused'][0]).abs().max().item()
    gdiff = max((a - b).abs().max().item() for a, b in zip(out['reference'][1], out['fused'][1]))
    if diff > 1e-3 or gdiff > 1e-3: raise RuntimeError(f"fused and reference differ: output {diff:.2e}, gradients {gdiff:.2e}")
    return dict(device=str(dev), max_abs_diff=diff, max_grad_diff=gdiff, seconds=times, speedup=times['reference'] / times['fused'])

def stage_dali(ctx) -> dict:
    from nasiam.loaders import dali_available
    if not dali_available(): return dict(importable=False, note='nvidia-dali is not installed: the DALI loader is not checked')
    if ctx['dry_run']: return dict(importable=True, note='would read two epochs of the CIFAR-10 subset with the DALI loader (CUDA)')
    from nasiam.train import pretrain
    r = pretrain(out=Path(ctx['tmp']) / 'dali', dataset='imagefolder', data_dir=ctx['data'], image_size=32, loader='dali', backbone='resnet18',
                 epochs=1, batch_size=256, precision='bf16', device='cuda', knn_every=0, progress=False, force=True)
    return dict(importable=True, steps=r['steps'])

def stage_dashboard(ctx) -> dict:
    r = _python(['benchmarks/run.py', '--json', '--device', 'cuda', '--only', 'dashboard'], ctx['limit'])
    return {k: r.get(k) for k in ('dashboard_refresh_ms', 'dashboard_throughput_ratio', 'dashboard', 'dashboard_live')}

def stage_ddp(ctx) -> dict:
    import torch
    if torch.cuda.device_count() < 2: return dict(skipped='fewer than 2 GPUs')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '-m', 'nasiam.cli', 'search',
                        '--out', str(Path(ctx['tmp']) / 'ddp'), '--dataset', 'digits', '--backbone', 'resnet_mini', '--epochs', '1', '--device', 'cuda',
                        '--force'], cwd=ROOT, capture_output=True, text=True, timeout=ctx['limit'],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if p.returncode: raise RuntimeError(f"exit {p.returncode}: {p.stderr[-2000:]}")
    return dict(ok=True, tail=p.stdout[-1000:])

# name -> (function, needs CUDA, seconds allowed, what it does)
STAGES = {
    'environment': (stage_environment, False, 30, 'versions, GPUs, CPU'),
    'wheels': (stage_wheels, False, 30, "the project's requirements installed here"),
    'benchmark': (stage_benchmark, True, 180, 'benchmarks/run.py --quick --device cuda --only peak/steps/compile/fused: ceiling, steps, fractions of peak, compiled/eager'),
    'search_pretrain': (stage_search_pretrain, True, 150, 'one epoch of a ResNet-18 SimSiam search and of a pretraining on the CIFAR-10 subset, bf16, eager and compiled'),
    'mixed_layer': (stage_mixed_layer, False, 30, 'the fused mixed layer against the reference (outputs, gradients, time)'),
    'dali': (stage_dali, False, 60, 'the DALI loader, if importable (one pretraining epoch on CUDA)'),
    'dashboard': (stage_dashboard, True, 120, 'benchmarks/run.py --only dashboard on CUDA: refresh time and live-dashboard search throughput against none'),
    'ddp': (stage_ddp, True, 60, 'one 2-process DDP search epoch with torchrun, if there are 2 GPUs'),
}


def run_stage(name, ctx) -> dict:
    fn, needs_cuda, limit, what = STAGES[name]
    rec = dict(needs_cuda=needs_cuda, limit_s=limit, what=what)
    if needs_cuda and not ctx['cuda']:
        return dict(rec, status='dry-run' if ctx['dry_run'] else 'skipped', would=what)
    t = time.perf_counter()
    try: rec.update(status='ok', result=fn(dict(ctx, limit=limit)))
    except Exception as e: rec.update(status='failed', error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
    rec['seconds'] = time.perf_counter() - t
    return rec


def _subset() -> Path:
    "The CIFAR-10 subset: under $NASIAM_SHARED_DATA, the repository's shared/data, or ../shared/data."
    roots = [Path(os.environ['NASIAM_SHARED_DATA'])] if os.environ.get('NASIAM_SHARED_DATA') else []
    roots += [ROOT / 'shared' / 'data', ROOT.parent / 'shared' / 'data']
    return next((r / 'cifar10-subset' for r in roots if (r / 'cifar10-subset').is_dir()), roots[-1] / 'cifar10-subset')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='device_check.json', help='the JSON file written')
    p.add_argument('--dry-run', action='store_true', help='run what needs no GPU; say what each CUDA stage would do')
    p.add_argument('--data', default=str(_subset()), help='the CIFAR-10 subset (ImageFolder)')
    p.add_argument('--only', action='append', choices=list(STAGES), help='run only this stage (repeatable)')
    p.add_argument('--requirements', action='store_true', help='print the requirements to bring as wheels, one a line, and exit')
    args = p.parse_args(argv)
    if args.requirements: print('\n'.join(requirements(('tensorboard',)))); return 0
    import torch
    sys.path.insert(0, str(ROOT))
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print('no CUDA device here: run with --dry-run, or on a GPU machine', file=sys.stderr); return 2
    report = dict(format=FORMAT, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  dry_run=args.dry_run, data=args.data, stages={})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = dict(cuda=cuda, dry_run=args.dry_run, device='cuda' if cuda else 'cpu', data=args.data, tmp=tmp)
        for name in STAGES:
            if args.only and name not in args.only: continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            report['stages'][name] = rec = run_stage(name, ctx)
            print(f"  {rec['status']}" + (f" in {rec['seconds']:.1f} s" if 'seconds' in rec else '') + (f": {rec['error']}" if 'error' in rec else ''),
                  file=sys.stderr, flush=True)
    report['seconds'] = sum(r.get('seconds', 0) for r in report['stages'].values())
    report['ok'] = all(r['status'] in ('ok', 'dry-run', 'skipped') for r in report['stages'].values())
    tmp_out = Path(args.out).with_suffix('.json.tmp')
    tmp_out.write_text(json.dumps(report, indent=1, default=str)); tmp_out.replace(args.out)
    print(f"wrote {args.out}: {'all stages passed' if report['ok'] else 'some stages failed'}", file=sys.stderr)
    return 0 if report['ok'] else 1

if __name__ == '__main__':
    sys.exit(main())
