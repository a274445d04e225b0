"""benchmarks/device_check.py --dry-run on the CPU: the wheel list comes from settings.ini, every stage that needs no GPU
runs, every CUDA stage says what it would do, and one JSON file holds it all; a missing requirement fails its stage."""
import importlib.util, json
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location('device_check', REPO / 'benchmarks' / 'device_check.py')
device_check = importlib.util.module_from_spec(spec); spec.loader.exec_module(device_check)


def test_requirements_come_from_settings():
    reqs = [device_check._name(r) for r in device_check.requirements(('tensorboard',))]
    assert {'plotly', 'papermill', 'ipywidgets', 'tensorboard'} <= set(reqs)
    assert 'torch' not in reqs and 'torchvision' not in reqs  # the CUDA machine has its own


@pytest.mark.slow  # a few seconds of CPU; longer on a loaded machine
def test_dry_run_writes_one_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'check.json'
    assert device_check.main(['--dry-run', '--out', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['format'] == device_check.FORMAT and report['dry_run'] and report['ok']
    stages = report['stages']
    assert list(stages) == list(device_check.STAGES)
    for name, (_, needs_cuda, _, what) in device_check.STAGES.items():
        assert stages[name]['status'] == ('dry-run' if needs_cuda else 'ok'), (name, stages[name])
        if needs_cuda: assert stages[name]['would'] == what
    assert stages['mixed_layer']['result']['max_abs_diff'] < 1e-3
    assert any(r.startswith('plotly>=') for r in stages['wheels']['result']['installed'])  # the requirement as settings.ini spells it
    # a requirement missing here: the wheels stage fails, the others still run, the file says so, the exit is 1
    monkeypatch.setattr(device_check, 'requirements', lambda extras=(): ['no-such-package-nasiam>=1'])
    assert device_check.main(['--dry-run', '--out', str(out), '--only', 'wheels', '--only', 'environment']) == 1
    report = json.loads(out.read_text())
    assert report['stages']['wheels']['status'] == 'failed' and 'no-such-package-nasiam>=1' in report['stages']['wheels']['error']
    assert report['stages']['environment']['status'] == 'ok' and not report['ok']
