"""Write tests/data/darts1_reference.pt: the alphas and genotypes of short first-order (darts1) searches.

The file pins the search's numbers: tests/test_strategies.py reruns the same searches and compares them bit
for bit. Regenerate it only on purpose (a change that is meant to alter the search's numbers):

    .venv/bin/python tests/data/make_darts1_reference.py
"""
import platform, sys, tempfile
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from nasiam.train import RunConfig, search  # noqa: E402

# small, fixed searches: fp32 on the CPU with one thread, so the arithmetic is the same every time on one CPU
CASES = {
    'simsiam': dict(alpha_l1=0.5),
    'moco': dict(options={'queue_size': 256}),
    'simclr': dict(arch_updates='epoch'),
}


def config(framework: str) -> RunConfig:
    return RunConfig(framework=framework, dataset='digits', backbone='resnet_mini', epochs=2, batch_size=128,
                     arch_lr=0.1, knn_every=0, device='cpu', precision='fp32', seed=3, **CASES[framework])


def cpu_model() -> str:
    "The CPU's model name and the vector-instruction flags that change float arithmetic's rounding."
    info = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    name = next((l.split(':', 1)[1].strip() for l in info.splitlines() if l.startswith('model name')), platform.processor())
    flags = next((l.split(':', 1)[1].split() for l in info.splitlines() if l.startswith('flags')), [])
    isa = sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma')))
    return f"{name} [{' '.join(isa)}]"


def run(framework: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as d:
            res = search(config(framework), out=Path(d) / framework, progress=False)
            ck = torch.load(Path(d) / framework / 'checkpoint.pt', weights_only=True)
    finally: torch.set_num_threads(threads)
    alphas = {k: v for k, v in ck['model'].items() if k.endswith('alphas')}
    return dict(genotype=res['genotype'], alphas=alphas)


if __name__ == '__main__':
    ref = dict(cpu=cpu_model(), torch=str(torch.__version__), cases={fw: run(fw) for fw in CASES})
    torch.save(ref, Path(__file__).with_name('darts1_reference.pt'))
    print(ref['cpu'], ref['torch'], {fw: r['genotype'] for fw, r in ref['cases'].items()})
