"""Headless runs report progress: `nasiam run` prints each code cell as it starts and the loop's epoch lines as they come."""
import json, os, re, subprocess, sys, time
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r'^epoch \d+/\d+\b')
TCP_WARNING = 'Kernel is running over TCP without encryption'


def run_timed(*args, cwd=REPO) -> tuple[list[tuple[float, str]], float, int, str]:
    "Run `python -m nasiam ARGS`; returns (seconds since start, line) of each stdout line as it arrived, the total seconds, the exit code and stderr."
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, '-m', 'nasiam', *map(str, args)], cwd=cwd, env=env, text=True, bufsize=1,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [(time.monotonic() - t0, line.rstrip('\n')) for line in proc.stdout]
    err = proc.stderr.read()
    code = proc.wait()
    return lines, time.monotonic() - t0, code, err


@pytest.mark.slow
def test_run_streams_epoch_lines_while_it_runs(tmp_path):
    lines, total, code, err = run_timed('run', REPO / 'nbs/experiments/quickstart.ipynb', '-p', 'search_epochs', 2, '-p', 'arch_warmup_epochs', 0,
                                        '-p', 'pretrain_epochs', 1, '--out', tmp_path / 'quickstart')
    assert code == 0, err[-2000:]
    cells = [(t, l) for t, l in lines if l.startswith('[cell ')]
    epochs = [(t, l) for t, l in lines if EPOCH_LINE.match(l)]
    assert len(cells) >= 4 and cells[0][1].startswith('[cell 1/'), lines
    assert [l.split()[1] for _, l in epochs] == ['1/2', '2/2', '1/1'], lines  # the search's two epochs, then the pretraining's
    (first, _), (last, _) = epochs[0], epochs[-1]
    print(f'cells at {[round(t, 1) for t, _ in cells]} s; epoch lines at {first:.1f} s and {last:.1f} s; exit at {total:.1f} s')
    assert last - first > 1 and first < total - 5, (first, last, total)  # streamed as they came, not dumped at the end
    assert any(t <= first for t, _ in cells) and cells[-1][0] >= last, cells  # cell lines and the loop's lines interleave, as they happened
    assert any(l.startswith('executed notebook:') for _, l in lines)
    assert TCP_WARNING not in err


def tiny_notebook(path: Path) -> Path:
    cells = [("out = 'runs/x'\nepochs = 2", ['parameters']), ("for e in range(epochs): print(f'epoch {e + 1}/{epochs}', flush=True)", [])]
    path.write_text(json.dumps(dict(
        cells=[dict(cell_type='code', metadata=dict(tags=t), source=s, outputs=[], execution_count=None, id=f'c{i}') for i, (s, t) in enumerate(cells)],
        metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python')), nbformat=4, nbformat_minor=5)))
    return path


def test_quiet_prints_no_progress(tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    loud, _, code, err = run_timed('run', nb, '--out', tmp_path / 'loud')
    assert code == 0, err
    assert [l for _, l in loud][:-1] == ['[cell 1/3] out = \'runs/x\'', '[cell 2/3] parameters given to this run',
                                         "[cell 3/3] for e in range(epochs): print(f'epoch {e + 1}/{epochs}', flush=True)",
                                         'epoch 1/2', 'epoch 2/2']
    quiet, _, code, err = run_timed('run', nb, '--out', tmp_path / 'quiet', '-p', 'epochs', 3, '--quiet')
    assert code == 0 and [l for _, l in quiet] == [f"executed notebook: {tmp_path / 'quiet' / 'tiny.ipynb'}"], quiet
    assert TCP_WARNING not in err


def test_sweep_prefixes_each_point(tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    (tmp_path / 'grid.yaml').write_text('epochs: [1, 2]\n')
    lines, _, code, err = run_timed('sweep', nb, '--grid', tmp_path / 'grid.yaml', '--out', tmp_path / 'sweep')
    assert code == 0, err
    text = [l for _, l in lines]
    assert '[epochs=1] epoch 1/1' in text and '[epochs=2] epoch 2/2' in text, text
    done = next(i for i, l in enumerate(text) if l.startswith('[1/2] epochs=1: done'))
    assert text.index('[epochs=1] epoch 1/1') < done  # the point's lines come while it runs, before its result line
