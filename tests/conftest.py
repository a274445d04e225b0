import os, shutil
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    "Under pytest-xdist each worker takes its share of the cores: that many torch threads here and in the processes the tests start."
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
    if not workers: return
    try: cores = len(os.sched_getaffinity(0))
    except AttributeError: cores = os.cpu_count() or 1
    threads = str(max(1, cores // workers))
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(var, threads)  # papermill kernels, torchrun, `python -m nasiam`
    import torch
    n = os.environ['OMP_NUM_THREADS']
    torch.set_num_threads(int(n) if n.isdigit() and int(n) > 0 else int(threads))


def pytest_collection_modifyitems(config, items):
    """The modules holding a slow test first, each module's tests in their order: with `--dist loadfile` the long modules start early
    and the workers finish together, rather than one waiting for the other's last long module."""
    slow = {item.path for item in items if item.get_closest_marker('slow')}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort: a module's tests stay together and in order


def shared_data(name: str) -> Path | None:
    "A dataset under ../shared/data (or $NASIAM_SHARED_DATA), or None when it is not there."
    roots = [Path(os.environ['NASIAM_SHARED_DATA'])] if os.environ.get('NASIAM_SHARED_DATA') else []
    roots.append(REPO.parent / 'shared' / 'data')
    for root in roots:
        if (root / name).is_dir(): return root / name
        if root.name == name and root.is_dir(): return root
    return None


@pytest.fixture(scope='session')
def digits():
    from nasiam.data import load_dataset
    return load_dataset('digits')


def cli(*args):
    "Run `nasiam ARGS...` in this process; returns (exit code, stdout, stderr)."
    import contextlib, io
    from nasiam.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


# Headless Debian Chromium through playwright (never a downloaded browser), loopback only: the browser tests' common part.
CHROMIUM = shutil.which('chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
try: from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright
except ImportError: PlaywrightTimeout = sync_playwright = None
NEEDS_BROWSER = [pytest.mark.skipif(CHROMIUM is None, reason='chromium not on PATH (apt-get install chromium)'),
                 pytest.mark.skipif(sync_playwright is None, reason='python package playwright not installed')]


@pytest.fixture(scope='module')
def browser():
    "A headless Chromium for the module's tests."
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
