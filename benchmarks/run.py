"""Throughput and peak memory of the data pipeline, the search and pretraining steps, and comparisons with kornia and lightly.

    python benchmarks/run.py [--quick] [--json] [--device auto|cpu|cuda] [--only SECTION] [--framework NAME] [--loader-workers N]

Timings are the best of a few interleaved repetitions (the least disturbed by other processes), after a warm-up.
Peak memory: torch.cuda.max_memory_allocated on CUDA; on the CPU, the growth of the process's resident set
during the timed calls, sampled every 2 ms (torch's CPU allocations are invisible to tracemalloc).
"""
import argparse, contextlib, copy, ctypes, gc, json, os, platform, sys, tempfile, threading, time
from pathlib import Path
import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_BUDGET_MS = 1500  # one live refresh of every figure of a 6+4-layer search holding 500 alpha snapshots
sys.path.insert(0, str(ROOT))
from nasiam.data import ImageData, MEAN_STD
from nasiam.augment import TwoViewAugment, torchvision_two_view_transform
from nasiam.backbones import build_backbone
from nasiam.frameworks import FRAMEWORKS, SimSiam
from nasiam.ops import SearchCell, set_fused
from nasiam.train import Run, RunConfig
from nasiam.hooks import Hook

TARGETS = {'augment_speedup': 5.0, 'arch_step_fraction': 0.6, 'lightly_ratio': 1.0, 'dashboard_refresh_ms': DASHBOARD_BUDGET_MS,
           'dashboard_throughput_ratio': 0.95, 'stream_speedup': 1.0}
LOWER_IS_BETTER = ('arch_step_fraction', 'dashboard_refresh_ms')
MEAN, STD = MEAN_STD['cifar10']
PAPER_FRAMEWORKS = ('simsiam', 'moco', 'simclr')  # the targets are about these; BYOL is measured beside them


# -- measuring ----------------------------------------------------------------------------------------
def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def _rss():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def _trim():
    gc.collect()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)  # hand freed memory back, so the baseline is honest
    except OSError: pass

class PeakMemory:
    "Peak memory (MiB) used inside the block: CUDA allocator peak, or sampled RSS growth on the CPU."
    def __init__(self, device): self.device, self.mib = device, float('nan')
    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device); torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif Path('/proc/self/statm').exists():
            _trim(); self.base = self.peak = _rss(); self.stop = threading.Event()
            def sample():
                while not self.stop.wait(0.002): self.peak = max(self.peak, _rss())
            self.thread = threading.Thread(target=sample, daemon=True); self.thread.start()
        return self
    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif hasattr(self, 'thread'):
            self.stop.set(); self.thread.join(); self.peak = max(self.peak, _rss())
            self.mib = (self.peak - self.base) / 2**20

def log(*a): print(*a, file=sys.stderr, flush=True)

def compare(fns:dict, device, reps:int, warmup:int=1) -> dict:
    "Best time (s) and peak memory (MiB) of each zero-argument function, run round-robin so load drift hits all alike."
    log('  timing', ', '.join(fns))
    for f in fns.values():
        for _ in range(warmup): f()
    times = {k: [] for k in fns}
    for _ in range(reps):  # timed without the memory sampler, which trims the heap and would add page faults
        for k, f in fns.items():
            _sync(device); t = time.perf_counter(); f(); _sync(device)
            times[k].append(time.perf_counter() - t)
    mem = {}
    for k, f in fns.items():  # then one more run of each, for its peak memory
        with PeakMemory(device) as pm: f()
        mem[k] = pm.mib
    return {k: (min(v), mem[k]) for k, v in times.items()}


def count_flops(fn) -> int:
    "FLOPs of one call of `fn`, forward and backward, as torch.utils.flop_counter counts them (matmuls and convolutions)."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as m: fn()
    return m.get_total_flops()


# -- the machine's ceiling ------------------------------------------------------------------------------
def bench_peak(args, device, rows, res, tmp=None):
    "TFLOP/s of a 3x3 convolution (channels_last, forward) and of a large square matmul, in bf16 and fp32: the ceiling the steps are measured against."
    n, ch, side, m = (32, 128, 16, 2048) if args.quick else (64, 128, 32, 4096)
    if device.type == 'cuda': n, ch, side, m = 256, 256, 32, 8192
    fns, flops = {}, {}
    for dt, name in ((torch.bfloat16, 'bf16'), (torch.float32, 'fp32')):
        conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(device, dt).to(memory_format=torch.channels_last).requires_grad_(False)
        x = torch.randn(n, ch, side, side, device=device, dtype=dt).to(memory_format=torch.channels_last)
        a, b = torch.randn(m, m, device=device, dtype=dt), torch.randn(m, m, device=device, dtype=dt)
        fns[f'conv3x3 {name}'] = (lambda conv, x: lambda: conv(x))(conv, x)
        fns[f'matmul {name}'] = (lambda a, b: lambda: a @ b)(a, b)
    for k, f in fns.items(): flops[k] = count_flops(f)
    t = compare(fns, device, reps=2 if args.quick else 4)
    res['peak_tflops'] = {k: flops[k] / s / 1e12 for k, (s, _) in t.items()}
    res['peak_shapes'] = dict(conv3x3=f"{n}x{ch}x{side}x{side}, {ch}->{ch} channels", matmul=f"{m}x{m} @ {m}x{m}")
    for k, (s, mib) in t.items():
        rows.append(dict(section='ceiling', case=k, batch=n if k.startswith('conv') else m, images_per_s=float('nan'), peak_mib=mib,
                         note=f"{res['peak_tflops'][k] * 1e3:.3g} GFLOP/s"))

def ceiling(res, dtype) -> float:
    "FLOP/s of the best of the ceiling's cases in `dtype` (bf16 for any autocast dtype below fp32)."
    name = 'fp32' if dtype == torch.float32 else 'bf16'
    return 1e12 * max(v for k, v in res['peak_tflops'].items() if k.endswith(name))


# -- data ---------------------------------------------------------------------------------------------
def load_images(n):
    "n CIFAR-10 images (uint8, N x 3 x 32 x 32) from ../shared/data/cifar10-subset when present, else noise."
    root = ROOT.parent / 'shared' / 'data' / 'cifar10-subset' / 'train'
    if root.is_dir():
        from PIL import Image
        files = sorted(root.glob('*/*.jpg'))[::max(1, 5000 // n)][:n]
        if len(files) == n:
            arr = np.stack([np.asarray(Image.open(f).convert('RGB')) for f in files])
            return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), 'cifar10-subset'
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), 'random pixels'

class _PILSet(torch.utils.data.Dataset):
    def __init__(self, images, transform): self.images, self.transform = images, transform
    def __len__(self): return len(self.images)
    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i].permute(1, 2, 0).numpy()))

def kornia_two_views(batch:int):
    "SimSiam's CIFAR augmentation recipe (Chen & He 2021) in kornia.augmentation (ColorJitter: torchvision's formulas, unlike ColorJiggle)."
    import kornia.augmentation as K
    aug = nn.Sequential(K.RandomResizedCrop((32, 32), scale=(0.2, 1.0)),
                        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
                        K.RandomHorizontalFlip(), K.Normalize(torch.tensor(MEAN), torch.tensor(STD)))
    return lambda x: (aug(x.float() / 255), aug(x.float() / 255))

def bench_augment(args, device, rows, res, tmp=None):
    batch, n_batches = 512, (2 if args.quick else 4)
    images, source = load_images(batch * n_batches)
    res['augment_images'] = source
    x = images[:batch].to(device)
    ours, gen = TwoViewAugment(32, MEAN, STD), torch.Generator(device=device).manual_seed(0)
    fns = {'batched (ours)': lambda: ours(x, gen)}
    try: fns['batched (kornia)'] = (lambda f: lambda: f(x))(kornia_two_views(batch))
    except ImportError: res['notes'].append('kornia is not installed: the kornia comparison is skipped (pip install kornia)')
    workers = min(2, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(_PILSet(images, torchvision_two_view_transform(32, MEAN, STD)), batch_size=batch,
                                         num_workers=workers, persistent_workers=True, pin_memory=device.type == 'cuda')
    def per_image():
        for v1, v2 in loader: v1.to(device, non_blocking=True); v2.to(device, non_blocking=True)
    t = compare(fns, device, reps=3 if args.quick else 5)
    tp = compare({'per-image': per_image}, device, reps=1 if args.quick else 2)['per-image']
    n_img = {'per-image': batch * n_batches}
    for k, (s, m) in {**t, 'per-image': tp}.items():
        rows.append(dict(section='augment', case=f"{k}" + (f", DataLoader {workers} workers" if k == 'per-image' else ''),
                         batch=batch, images_per_s=n_img.get(k, batch) / s, peak_mib=m))
    ips = {r['case'].split(',')[0]: r['images_per_s'] for r in rows if r['section'] == 'augment'}
    res['augment_speedup'] = ips['batched (ours)'] / ips['per-image']
    if 'batched (kornia)' in ips: res['kornia_ratio'] = ips['batched (ours)'] / ips['batched (kornia)']


# -- steps ----------------------------------------------------------------------------------------
def make_run(mode, framework, backbone, batch, device, tmp, heads=None, strategy='darts1', **overrides):
    "A Run on synthetic in-memory data whose steps see the same precomputed views every time."
    n = 3 * batch  # the weight and architecture splits each hold more than a batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 2
    data = ImageData('digits', images, labels, images[:8], labels[:8], ['a', 'b'], MEAN, STD, 32)
    options = {'queue_size': 4096} if framework == 'moco' else {}
    c = RunConfig(mode=mode, framework=framework, heads=heads or ('search' if mode == 'search' else 'standard'),
                  backbone=backbone, batch_size=batch, epochs=1, device=str(device), options=options, strategy=strategy, **overrides)
    run = Run(c, tempfile.mkdtemp(prefix=f"{mode}-{framework}-{backbone}-", dir=tmp), progress=False, data=data)
    views = run.views(torch.arange(batch))
    run.views = lambda idx: views
    return run, views

def bench_steps(args, device, rows, res, tmp):
    sizes = {'resnet_mini': 64 if args.quick else 128, 'resnet18': 8 if args.quick else 16}
    if device.type == 'cuda': sizes = {'resnet_mini': 512, 'resnet18': 512}
    reps = 1 if args.quick else 2
    res['arch_step_fraction_by'], res['peak_fraction_by'] = {}, {}
    if 'peak_tflops' not in res: bench_peak(args, device, rows, res)  # the ceiling, measured in the same run
    for backbone, batch in sizes.items():
        for fw in args.framework or PAPER_FRAMEWORKS + ('byol',):
            search, _ = make_run('search', fw, backbone, batch, device, tmp)
            pre, _ = make_run('pretrain', fw, backbone, batch, device, tmp)
            a_idx, w_idx = torch.arange(batch), torch.arange(batch)
            t = compare({'arch': lambda: search.arch_step(a_idx), 'weight': lambda: search.weight_step(w_idx),
                         'pretrain': lambda: pre.weight_step(w_idx)}, device, reps)
            frac = t['arch'][0] / t['weight'][0]
            res['arch_step_fraction_by'][f"{fw}/{backbone}"] = frac
            flops = dict(search=count_flops(lambda: (search.arch_step(a_idx), search.weight_step(w_idx))),
                         pretrain=count_flops(lambda: pre.weight_step(w_idx)))
            top = ceiling(res, search.amp_dtype)
            of_peak = dict(search=flops['search'] / (t['arch'][0] + t['weight'][0]) / top, pretrain=flops['pretrain'] / t['pretrain'][0] / top)
            res['peak_fraction_by'][f"{fw}/{backbone}"] = of_peak
            rows.append(dict(section='search step', case=f"{fw} {backbone}", batch=batch,
                             images_per_s=batch / (t['arch'][0] + t['weight'][0]), peak_mib=max(t['arch'][1], t['weight'][1]),
                             note=f"arch {t['arch'][0]*1e3:.0f} ms = {frac:.2f}x weight {t['weight'][0]*1e3:.0f} ms; "
                                  f"{of_peak['search'] * top / 1e9:.3g} GFLOP/s = {of_peak['search']:.0%} of peak"))
            rows.append(dict(section='pretrain step', case=f"{fw} {backbone} (standard heads)", batch=batch,
                             images_per_s=batch / t['pretrain'][0], peak_mib=t['pretrain'][1],
                             note=f"{of_peak['pretrain'] * top / 1e9:.3g} GFLOP/s = {of_peak['pretrain']:.0%} of peak"))
            del search, pre; gc.collect()
    res['arch_step_fraction'] = res['arch_step_fraction_by'].get('simsiam/resnet18')
    res['arch_step_fraction_worst'] = max((v for k, v in res['arch_step_fraction_by'].items() if k.split('/')[0] in PAPER_FRAMEWORKS), default=None)
    res['precision'] = str(search_precision(device))

def search_precision(device):
    from nasiam.train import resolve_precision
    return resolve_precision('auto', device)


# -- search strategies ------------------------------------------------------------------------------
def bench_strategies(args, device, rows, res, tmp):
    "One architecture step of each strategy, against darts1's, on the same run and views (SimSiam)."
    sizes = {'resnet_mini': 64 if args.quick else 128, 'resnet18': 8 if args.quick else 16}
    if device.type == 'cuda': sizes = {'resnet_mini': 512, 'resnet18': 256}
    reps = 1 if args.quick else 2
    res['strategy_cost_by'] = {}
    for backbone, batch in sizes.items():
        runs = {s: make_run('search', 'simsiam', backbone, batch, device, tmp, strategy=s)[0] for s in ('darts1', 'darts2', 'gdas')}
        runs['gdas'].strategy.before_epoch(runs['gdas'], 0)  # sampling on, at the first epoch's temperature
        idx = torch.arange(batch)
        t = compare({s: (lambda r: lambda: r.arch_step(idx, idx))(r) for s, r in runs.items()}, device, reps)
        for s, (sec, mib) in t.items():
            ratio = sec / t['darts1'][0]
            res['strategy_cost_by'][f"{s}/{backbone}"] = ratio
            rows.append(dict(section='arch step by strategy', case=f"{s} simsiam {backbone}", batch=batch, images_per_s=batch / sec,
                             peak_mib=mib, note=f"{sec*1e3:.0f} ms = {ratio:.2f}x darts1"))
        del runs; gc.collect()
    res['darts2_cost'] = res['strategy_cost_by']['darts2/resnet18']


# -- fused mixed layer ----------------------------------------------------------------------------------
def bench_fused(args, device, rows, res, tmp=None):
    batch = 512 if (device.type == 'cuda' or not args.quick) else 256
    res['fused_speedup'] = {}
    for name, dims in (('projector 6x512', [512] * 7), ('predictor 2048-512-512-512-2048', [2048, 512, 512, 512, 2048])):
        torch.manual_seed(0)
        ref = SearchCell(dims, fused=False).to(device); fus = set_fused(copy.deepcopy(ref), True)
        x = torch.randn(batch, dims[0], device=device)
        def step(cell): cell(x).square().mean().backward()
        t = compare({'reference': lambda: step(ref), 'fused': lambda: step(fus)}, device, reps=2 if args.quick else 4)
        res['fused_speedup'][name] = t['reference'][0] / t['fused'][0]
        for k, (s, m) in t.items():
            rows.append(dict(section='mixed layer fwd+bwd', case=f"{name}, {k}", batch=batch, images_per_s=batch / s, peak_mib=m,
                             note=f"fused {res['fused_speedup'][name]:.2f}x" if k == 'fused' else ''))


# -- lightly -----------------------------------------------------------------------------------------
def bench_lightly(args, device, rows, res, tmp):
    try:
        from lightly.models.modules import SimSiamProjectionHead, SimSiamPredictionHead
        from lightly.loss import NegativeCosineSimilarity
    except ImportError:
        res['notes'].append('lightly is not installed: the lightly comparison is skipped (pip install lightly)'); return
    sizes = {'resnet_mini': 64 if args.quick else 128, 'resnet18': 8 if args.quick else 16}
    if device.type == 'cuda': sizes = {'resnet_mini': 512, 'resnet18': 512}
    res['lightly_ratio_by'], res['lightly_ratio_matched_by'] = {}, {}
    for backbone, batch in sizes.items():
        ours, (x0, x1) = make_run('pretrain', 'simsiam', backbone, batch, device, tmp)
        heads = SimSiam.mini_widths if backbone == 'resnet_mini' else SimSiam.widths
        torch.manual_seed(0)
        bb = build_backbone(backbone, 32)
        feat, proj, pred = bb.feat_dim, heads['proj_dim'], heads['pred_dim']

        class LightlySimSiam(nn.Module):  # lightly's documented SimSiam example, at our head widths
            def __init__(self, backbone):
                super().__init__()
                self.backbone = backbone
                self.projection_head = SimSiamProjectionHead(feat, feat, proj)
                self.prediction_head = SimSiamPredictionHead(proj, pred, proj)
            def forward(self, x):
                f = self.backbone(x).flatten(start_dim=1)
                z = self.projection_head(f)
                p = self.prediction_head(z)
                return z.detach(), p

        # lightly as its documentation shows it (plain SGD, default memory layout, fp32), and the same model with
        # our precision and memory layout, so that the gain from the settings and the gain from the code are both visible
        documented = LightlySimSiam(bb).to(device)
        matched = copy.deepcopy(documented)
        if ours.channels_last: matched = matched.to(memory_format=torch.channels_last)
        criterion = NegativeCosineSimilarity()
        def lightly_step(model, opt, autocast, v0, v1):
            def step():
                with autocast():
                    z0, p0 = model(v0); z1, p1 = model(v1)
                    loss = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
                loss.backward(); opt.step(); opt.zero_grad()
            return step
        sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.06 * batch / 256, momentum=0.9, weight_decay=5e-4)
        idx = torch.arange(batch)
        t = compare({'ours': lambda: ours.weight_step(idx),
                     'lightly (documented)': lightly_step(documented, sgd(documented), contextlib.nullcontext,
                                                          x0.contiguous(), x1.contiguous()),
                     'lightly (our precision and layout)': lightly_step(matched, sgd(matched), ours._autocast, x0, x1)},
                    device, reps=2 if args.quick else 4)
        ratio = t['lightly (documented)'][0] / t['ours'][0]
        res['lightly_ratio_by'][backbone] = ratio
        res['lightly_ratio_matched_by'][backbone] = t['lightly (our precision and layout)'][0] / t['ours'][0]
        for k, (s, m) in t.items():
            note = {'ours': f"ours/lightly {ratio:.2f}x",
                    'lightly (our precision and layout)': f"ours/this {res['lightly_ratio_matched_by'][backbone]:.2f}x"}.get(k, '')
            rows.append(dict(section='SimSiam pretrain vs lightly', case=f"{backbone}, {k}", batch=batch, images_per_s=batch / s,
                             peak_mib=m, note=note))
        del ours, documented, matched; gc.collect()
    res['lightly_ratio'] = res['lightly_ratio_by']['resnet18']
    res['lightly_ratio_matched'] = res['lightly_ratio_matched_by']['resnet18']


# -- dashboard -------------------------------------------------------------------------------------------
def bench_dashboard(args, device, rows, res, tmp):
    "Milliseconds of one live refresh of every figure (FigureWidgets updated in place) of a 6+4-layer search with 500 alpha snapshots."
    from nasiam.dashboard import Dashboard, write_report
    from nasiam.figures import run_figures
    from nasiam.records import MetricsWriter, RunHistory, read_metrics, write_demo_run
    run = Path(tmp) / 'dashboard'
    with MetricsWriter(run / 'metrics.jsonl') as w:  # 5 x 1000 steps, alphas every 10 steps: 500 snapshots per cell
        write_demo_run(w, epochs=5, steps_per_epoch=1000, cells={'projector': 6, 'predictor': 4}, alpha_every=10)
    records = read_metrics(run / 'metrics.jsonl')
    cut = [i for i, r in enumerate(records) if r['kind'] == 'alphas'][-1]  # hold back the last snapshot and what follows
    dash = Dashboard(live=True, every_steps=None, every_seconds=None, history=RunHistory(alpha_cap=1024))  # room to keep all 500
    for r in records[:cut]: dash.history.add(r)
    dash.refresh()  # builds the widgets
    assert all(len(dash.history.alphas[c]) == 499 for c in ('projector', 'predictor'))
    reps = 3 if args.quick else 7
    times, build = [], []
    for i in range(reps):  # each repetition: a new snapshot and a step arrive, then one refresh
        dash.history.add(dict(records[cut], step=records[cut]['step'] + i))
        dash.history.add(dict(kind='step', step=records[cut]['step'] + i, epoch=4, loss=-0.9, lr=0.001))
        t = time.perf_counter(); dash.refresh(); times.append(time.perf_counter() - t)
        t = time.perf_counter(); run_figures(dash.history); build.append(time.perf_counter() - t)
    t = time.perf_counter(); write_report(run); report_s = time.perf_counter() - t
    res['dashboard_refresh_ms'] = 1000 * min(times)
    res['dashboard'] = dict(refresh_ms_best=1000 * min(times), refresh_ms_median=1000 * sorted(times)[len(times) // 2],
                            figures_ms_best=1000 * min(build), report_ms=1000 * report_s, snapshots=len(dash.history.alphas['projector']),
                            figures=len(dash.widgets), reps=reps)
    log(f"  dashboard: refresh {1000 * min(times):.0f} ms best, {res['dashboard']['refresh_ms_median']:.0f} ms median "
        f"(building the figures {1000 * min(build):.0f} ms), report {1000 * report_s:.0f} ms")
    bench_dashboard_live(args, device, rows, res, tmp)  # and what a live dashboard costs a running search

class _StepClock(Hook):
    "Wall time from the first step's start to the last step's end, and the steps between."
    def __init__(self): self.first = self.last = None; self.steps = 0
    def before_step(self, run): self.first = self.first or time.perf_counter()
    def after_step(self, run, step): self.last, self.steps = time.perf_counter(), self.steps + 1
    @property
    def steps_per_s(self) -> float: return self.steps / (self.last - self.first)

def bench_dashboard_live(args, device, rows, res, tmp):
    """Steps/s of a resnet_mini SimSiam search with a live Dashboard as its callback, against the same search without one.
    Steps of tens of milliseconds, as on a GPU (batch 8 in fp32 on the CPU, 256 on CUDA), every step logged (a step
    record and an alpha snapshot each), runs of several hundred steps (the widgets' first build is part of a run, not the
    whole of it), in pairs alternated so that load drift hits both alike. The ratio is the median of the pairs' ratios."""
    from nasiam.dashboard import Dashboard
    cuda = device.type == 'cuda'
    batch = 256 if cuda else 8
    per_epoch, epochs, reps = 100, (2 if args.quick else 5), (2 if args.quick else 3)
    n = 2 * per_epoch * batch  # the search's two halves: `per_epoch` weight steps an epoch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    data = ImageData('digits', images, torch.arange(n) % 2, images[:8], torch.arange(8) % 2, ['a', 'b'], MEAN, STD, 32)
    c = RunConfig(mode='search', heads='search', backbone='resnet_mini', batch_size=batch, epochs=epochs, device=str(device),
                  precision='auto' if cuda else 'fp32',  # on the CPU bf16 autocast slows resnet_mini's small convolutions
                  knn_every=0, log_every=1, monitor_every=10)
    rates, dashes = {'without': [], 'live dashboard': []}, []
    for i in range(reps):
        for case in (('live dashboard', 'without') if i % 2 == 0 else ('without', 'live dashboard')):  # alternated
            clock = _StepClock()
            callbacks = [Dashboard(live=True)] if case != 'without' else []
            dashes += callbacks
            Run(c, tempfile.mkdtemp(prefix='dash-', dir=tmp), force=True, callbacks=callbacks, progress=False, data=data, hooks=[clock]).fit()
            rates[case].append(clock.steps_per_s)
    ratios = [l / w for l, w in zip(rates['live dashboard'], rates['without'])]
    res['dashboard_throughput_ratio'] = float(np.median(ratios))
    res['dashboard_live'] = dict(batch=batch, steps=clock.steps, epochs=epochs, reps=reps, steps_per_s=rates, pair_ratios=ratios,
                                 refreshes=[d.refreshes for d in dashes], refresh_s_last=[d.refresh_seconds for d in dashes],
                                 refresh_share=[d.refresh_total / d.elapsed for d in dashes])
    med = {k: float(np.median(v)) for k, v in rates.items()}
    for k, v in med.items():
        rows.append(dict(section='live dashboard search', case=f"simsiam resnet_mini, {k}", batch=batch, images_per_s=v * batch,
                         peak_mib=float('nan'), note=f"{v:.1f} steps/s" + (f", {res['dashboard_throughput_ratio']:.2f}x without (median of {reps} pairs)" if k != 'without' else '')))
    log(f"  live dashboard search: {clock.steps} steps of {1000 / med['without']:.0f} ms; pairs' ratios " + ', '.join(f'{r:.3f}' for r in ratios)
        + f"; median {res['dashboard_throughput_ratio']:.3f}x; refreshes {res['dashboard_live']['refreshes']}, "
        + 'share of the time ' + ', '.join(f'{s:.1%}' for s in res['dashboard_live']['refresh_share']))


# -- compile ---------------------------------------------------------------------------------------------
def bench_compile(args, device, rows, res, tmp):
    "Compiled over eager throughput of a search step (architecture + weight) and a pretraining step, SimSiam on resnet_mini; the compiling calls timed apart."
    if device.type == 'cpu' and not (args.only and 'compile' in args.only):
        res['notes'].append('compile: skipped on the CPU unless asked (--only compile): compiling takes minutes here'); return
    batch = 512 if device.type == 'cuda' else (32 if args.quick else 64)
    fns, res['compile_seconds'] = {}, {}
    for compiled in (False, True):
        for mode in ('search', 'pretrain'):
            run, _ = make_run(mode, 'simsiam', 'resnet_mini', batch, device, tmp, compile=compiled)
            idx = torch.arange(batch)
            step = (lambda r: lambda: (r.arch_step(idx, idx), r.weight_step(idx)))(run) if mode == 'search' else (lambda r: lambda: r.weight_step(idx))(run)
            name = f"{mode}, {'compiled' if compiled else 'eager'}"
            t = time.perf_counter()
            for _ in range(3): step()  # compiles (and recompiles, if it must) here
            _sync(device); res['compile_seconds'][name] = time.perf_counter() - t
            fns[name] = step
    t = compare(fns, device, reps=2 if args.quick else 4, warmup=0)
    res['compile_speedup'] = {m: t[f"{m}, eager"][0] / t[f"{m}, compiled"][0] for m in ('search', 'pretrain')}
    for k, (s, mib) in t.items():
        rows.append(dict(section='compile', case=f"simsiam resnet_mini {k}", batch=batch, images_per_s=batch / s, peak_mib=mib,
                         note=f"first 3 calls {res['compile_seconds'][k]:.1f} s" + (f"; {res['compile_speedup'][k.split(',')[0]]:.2f}x eager" if 'compiled' in k else '')))


# -- image folder loaders ---------------------------------------------------------------------------------
def make_jpeg_folder(root, n, seed=0, sizes=(96, 192)):
    "An ImageFolder tree of `n` JPEGs (train/, 10 classes) and a few in test/: smooth random colour fields with mild noise, sides drawn from `sizes`."
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (('train', n), ('test', max(10, n // 20))):
        for i in range(count):
            folder = Path(root) / split / f'class{i % 10}'
            folder.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
            coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 4, 4))).float()
            field = torch.nn.functional.interpolate(coarse, size=(h, w), mode='bicubic', align_corners=False)[0].permute(1, 2, 0).numpy()
            img = (field + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f'{i:05d}.jpg', quality=90)
    return Path(root)

def bench_loader(args, device, rows, res, tmp):
    "Images/s of one pass over a generated JPEG folder: the stream loader, torchvision's ImageFolder with per-image transforms (same workers, batch and prefetch), and tensor indexing in memory."
    import torchvision.datasets as tvd, torchvision.transforms as T
    from nasiam.data import load_dataset
    from nasiam.loaders import scan_imagefolder, ImageFileDataset, stream_loader, BatchStream
    n, batch, prefetch = (1000 if args.quick else 2000), 64, 4
    workers = args.loader_workers if args.loader_workers is not None else min(2, os.cpu_count() or 1)
    root = make_jpeg_folder(Path(tmp) / 'jpegs', n)
    files = scan_imagefolder(root, progress=False)
    pin = device.type == 'cuda'
    def consume(loader):
        def run():
            for batch_ in loader:
                x = batch_[0]
                x.to(device, non_blocking=True)
        return run
    res['loader'] = dict(images=n, jpeg_sides='96-192 px', batch=batch, workers=workers, prefetch_factor=prefetch)
    for case, size, crop, tv in (('random crop to 64 px', 64, 'random', T.RandomResizedCrop(64, scale=(0.2, 1.0), antialias=True)),
                                 ('centred 32 px', 32, 'center', T.Compose([T.Resize(32, antialias=True), T.CenterCrop(32)]))):
        ours = stream_loader(ImageFileDataset(files.train_files, files.train_labels, size, crop=crop), batch, drop_last=False,
                             num_workers=workers, device=device, prefetch_factor=prefetch)
        folder = tvd.ImageFolder(str(root / 'train'), transform=T.Compose([tv, T.PILToTensor()]))
        theirs = torch.utils.data.DataLoader(folder, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                                             persistent_workers=workers > 0, prefetch_factor=prefetch if workers else None)
        t = compare({'stream': consume(ours), 'imagefolder': consume(theirs)}, device, reps=2 if args.quick else 3)
        ips = {k: n / s for k, (s, _) in t.items()}
        key = '' if crop == 'random' else '_center'
        res[f'stream_images_per_s{key}'], res[f'imagefolder_images_per_s{key}'] = ips['stream'], ips['imagefolder']
        res[f'stream_speedup{key}'] = ips['stream'] / ips['imagefolder']
        for k, label in (('stream', 'stream loader'), ('imagefolder', 'ImageFolder + transforms')):
            rows.append(dict(section='image folder loader', case=f"{case}: {label}", batch=batch, images_per_s=ips[k], peak_mib=t[k][1],
                             note=f"{workers} workers" + (f", {ips['stream'] / ips['imagefolder']:.2f}x" if k == 'stream' else '')))
        del ours, theirs; gc.collect()
    # in memory: decoded once up front (PIL, one process), then each pass indexes a tensor
    t0 = time.perf_counter()
    data = load_dataset('imagefolder', root, image_size=64)
    res['memory_load_s'] = time.perf_counter() - t0
    stream = BatchStream(len(data.train_images), batch, drop_last=False)
    def memory_pass():
        for idx in stream.epoch_batches(): data.train_images[idx].to(device, non_blocking=True)
    s, m = compare({'memory': memory_pass}, device, reps=3)['memory']
    res['memory_images_per_s'] = n / s
    rows.append(dict(section='image folder loader', case='64 px: in memory, tensor indexing', batch=batch, images_per_s=n / s, peak_mib=m,
                     note=f"after decoding all {n} up front in {res['memory_load_s']:.1f} s"))
    log(f"  stream {res['stream_images_per_s']:.0f} images/s, ImageFolder {res['imagefolder_images_per_s']:.0f} images/s "
        f"({res['stream_speedup']:.2f}x), in memory {res['memory_images_per_s']:.0f} images/s")


# -- feature map -----------------------------------------------------------------------------------------
def bench_featuremap(args, device, rows, res, tmp=None):
    "Seconds of the feature map a pretraining ends with, at its default cap: PCA and t-SNE of 512-d features in 10 clusters, and its figure."
    from nasiam.evaluate import feature_map, feature_map_record
    from nasiam.figures import feature_map_figure
    from nasiam.records import RunHistory
    points = RunConfig().feature_map_points
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(points // 10)
    feats = torch.randn(10, 512, generator=g)[labels] + 2 * torch.randn(len(labels), 512, generator=g)  # overlapping clusters, like a short pretraining's
    feature_map(feats[:50], labels[:50])  # imports scikit-learn's PCA and t-SNE outside the timings
    m = feature_map(feats, labels, max_points=points)
    history = RunHistory.from_records([dict(kind='feature_map', step=0, epoch=0, time=0.0, **feature_map_record(m, images=len(labels)))])
    t = time.perf_counter(); feature_map_figure(history).to_html(include_plotlyjs=False); figure_s = time.perf_counter() - t
    res['feature_map'] = dict(points=len(m['rows']), dim=feats.shape[1], pca_s=m['seconds']['pca'], tsne_s=m['seconds']['tsne'],
                              figure_ms=1000 * figure_s, threads=torch.get_num_threads())
    log(f"  feature map of {len(m['rows'])} points: PCA {m['seconds']['pca']:.2f} s, t-SNE {m['seconds']['tsne']:.2f} s, figure {1000 * figure_s:.0f} ms")


# -- report ---------------------------------------------------------------------------------------------
def table(rows, res):
    lines = [f"device: {res['device']}  (torch {res['torch']}, {res['threads']} threads, precision {res.get('precision', '?')})",
             f"{'section':<28} {'case':<48} {'batch':>5} {'images/s':>10} {'peak MiB':>9}  note"]
    for r in rows:
        lines.append(f"{r['section']:<28} {r['case']:<48} {r['batch']:>5} {r['images_per_s']:>10.1f} {r['peak_mib']:>9.1f}  {r.get('note', '')}")
    lines.append('')
    lines.append('targets:')
    for k, target in TARGETS.items():
        v = res.get(k)
        if v is None: lines.append(f"  {k:<22} skipped"); continue
        met = v <= target if k in LOWER_IS_BETTER else v >= target
        lines.append(f"  {k:<22} {v:6.2f}  target {'<=' if k in LOWER_IS_BETTER else '>='} {target}  {'met' if met else 'NOT met'}")
    if 'kornia_ratio' in res: lines.append(f"  {'kornia_ratio':<22} {res['kornia_ratio']:6.2f}  (ours / kornia, same recipe)")
    if 'lightly_ratio_matched' in res:
        lines.append(f"  {'lightly_ratio_matched':<22} {res['lightly_ratio_matched']:6.2f}  (ours / lightly given our precision and memory layout)")
    for name, v in res.get('fused_speedup', {}).items(): lines.append(f"  fused mixed layer      {v:6.2f}x  {name}")
    if 'dashboard' in res:
        d = res['dashboard']
        lines.append(f"  dashboard              {d['figures']} figures, {d['snapshots']} snapshots per cell: refresh {d['refresh_ms_best']:.0f} ms best, "
                     f"{d['refresh_ms_median']:.0f} ms median; building them {d['figures_ms_best']:.0f} ms; report.html {d['report_ms']:.0f} ms")
    if 'feature_map' in res:
        f = res['feature_map']
        lines.append(f"  feature map            {f['points']} points x {f['dim']}: PCA {f['pca_s']:.2f} s, t-SNE {f['tsne_s']:.2f} s, figure {f['figure_ms']:.0f} ms")
    if 'stream_speedup' in res:
        lines.append(f"  {'stream_speedup_center':<22} {res['stream_speedup_center']:6.2f}  (stream / ImageFolder, centred 32 px squares); "
                     f"in memory {res['memory_images_per_s']:.0f} images/s after {res['memory_load_s']:.1f} s of decoding")
    if 'peak_tflops' in res:
        lines.append('  ceiling                ' + ', '.join(f"{k} {v:.2f}" for k, v in res['peak_tflops'].items()) + ' TFLOP/s')
    for k, v in res.get('peak_fraction_by', {}).items():
        lines.append(f"  of peak  {k:<22} search step {v['search']:5.1%}, pretrain step {v['pretrain']:5.1%}")
    for k, v in res.get('compile_speedup', {}).items(): lines.append(f"  compiled/eager         {v:6.2f}x  {k} step")
    for n in res['notes']: lines.append(f"note: {n}")
    return '\n'.join(lines)

SECTIONS = (bench_peak, bench_augment, bench_fused, bench_steps, bench_compile, bench_strategies, bench_lightly, bench_dashboard, bench_featuremap, bench_loader)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='smaller batches and fewer repetitions (a couple of minutes on a 2-core CPU)')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of the table')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--only', choices=[f.__name__[6:] for f in SECTIONS], action='append', help='run only this section (repeatable)')
    p.add_argument('--framework', action='append', choices=FRAMEWORKS, help='the steps section: only this framework (repeatable; default: all)')
    p.add_argument('--loader-workers', type=int, default=None, help='DataLoader workers of the loader section (default: 2, or fewer cores)')
    args = p.parse_args(argv)
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU)"
    res = dict(device=name, torch=torch.__version__, threads=torch.get_num_threads(), quick=args.quick, notes=[])
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for section in SECTIONS:
            if args.only and section.__name__[6:] not in args.only: continue
            t1 = time.time(); log(section.__name__)
            section(args, device, rows, res, tmp)
            log(f"  {section.__name__}: {time.time() - t1:.0f} s")
    res['seconds'] = time.time() - t0
    res['targets'] = TARGETS
    res['rows'] = rows
    print(json.dumps(res, indent=1) if args.json else table(rows, res))

if __name__ == '__main__':
    main()
