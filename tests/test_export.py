"nasiam export: the backbone as safetensors that load into torchvision with strict=True, the heads, the genotype, a model card; refusals that leave nothing behind."
import hashlib, json
from pathlib import Path
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from conftest import cli
import nasiam
from nasiam.data import load_dataset
from nasiam.export import adapt_resnet, load_backbone, load_heads
from nasiam.train import load_checkpoint, model_from_checkpoint, pretrain

GENOTYPE = 'simsiam-cifar10-resnet18'


def _digits(n):
    d = load_dataset('digits', image_size=16)
    d.train_images, d.train_labels = d.train_images[:n], d.train_labels[:n]
    return d


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A 1-epoch digits pretraining with resnet18 (CIFAR stem, 16 px, 40 images) and one with resnet_mini."
    root = tmp_path_factory.mktemp('export')
    for backbone in ('resnet18', 'resnet_mini'):
        pretrain(dataset='digits', image_size=16, backbone=backbone, genotype=GENOTYPE, epochs=1, batch_size=8, knn_k=5,
                 precision='fp32', device='cpu', out=root / backbone, progress=False, data=_digits(40))
    return root


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.mark.slow
def test_export_loads_into_torchvision(runs, tmp_path):
    "The exported resnet18 loads strictly into torchvision.models.resnet18 with the stem helper and gives nasiam's features to 1e-6."
    before = _hashes(runs / 'resnet18')
    code, out, err = cli('export', '--run', runs / 'resnet18', '--out', tmp_path / 'exp')
    assert code == 0, err
    exp = tmp_path / 'exp'
    assert out.strip() == str(exp)
    assert sorted(p.name for p in exp.iterdir()) == ['README.md', 'backbone.safetensors', 'config.json', 'export.json', 'genotype.json', 'heads.safetensors']
    assert _hashes(runs / 'resnet18') == before  # nothing written into the run folder
    info = json.loads((exp / 'export.json').read_text())
    assert info['format'] == 'torchvision' and info['cifar_stem'] is True and info['checkpoint'] == 'checkpoint.pt'
    tv = adapt_resnet(torchvision.models.resnet18(), cifar_stem=True)
    tv.load_state_dict(load_file(str(exp / 'backbone.safetensors')), strict=True)
    model = model_from_checkpoint(load_checkpoint(runs / 'resnet18' / 'checkpoint.pt'))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.embed(x)
        assert (tv.eval()(x) - want).abs().max().item() <= 1e-6
        assert (nasiam.load_backbone(exp)(x) - want).abs().max().item() <= 1e-6
        z = load_heads(exp)['projector'](want)
        assert torch.allclose(z, model.projector(want), atol=1e-6)
    assert json.loads((exp / 'genotype.json').read_text())['projector'][0] == ['linear_relu']
    assert json.loads((exp / 'config.json').read_text())['backbone'] == 'resnet18'
    card = (exp / 'README.md').read_text()
    assert 'digits' in card and '1 epochs' in card and 'held-out kNN top-1' in card and 'strict=True' in card


def test_export_best_and_mini(runs, tmp_path):
    "--checkpoint best reads best.pt; resnet_mini exports under nasiam's keys and loads with load_backbone."
    code, _, err = cli('export', '--run', runs / 'resnet_mini', '--out', tmp_path / 'mini', '--checkpoint', 'best')
    assert code == 0, err
    info = json.loads((tmp_path / 'mini' / 'export.json').read_text())
    assert info['format'] == 'nasiam' and info['checkpoint'] == 'best.pt'
    model = model_from_checkpoint(load_checkpoint(runs / 'resnet_mini' / 'best.pt'))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(): assert (load_backbone(tmp_path / 'mini')(x) - model.embed(x)).abs().max().item() <= 1e-6


def test_export_refusals_leave_nothing(runs, tmp_path, monkeypatch):
    "Bad inputs: one sentence, exit 2, nothing written; a failure mid-export leaves no folder and no temporary."
    run = runs / 'resnet_mini'
    before = _hashes(run)
    for args, words in [(('--run', tmp_path / 'nope', '--out', tmp_path / 'a'), 'not a run directory'),
                        (('--run', run, '--out', run / 'exp'), 'run folder'),
                        (('--run', run, '--out', run), 'run folder'),
                        (('--run', run, '--out', tmp_path / 'a', '--checkpoint', 'middle'), "invalid choice: 'middle'")]:
        code, _, err = cli('export', *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert _hashes(run) == before and not (tmp_path / 'a').exists() and not (run / 'exp').exists()
    kept = tmp_path / 'kept'; kept.mkdir(); (kept / 'mine.txt').write_text('keep')
    code, _, err = cli('export', '--run', run, '--out', kept)
    assert code == 2 and '--force' in err and (kept / 'mine.txt').read_text() == 'keep'
    import nasiam.export as ex
    monkeypatch.setattr(ex, 'model_card', lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError): ex.export_run(run, kept, force=True)
    assert (kept / 'mine.txt').read_text() == 'keep'  # the old folder stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kept']  # no temporary left
    monkeypatch.undo()
    code, _, err = cli('export', '--run', run, '--out', kept, '--force')
    assert code == 0 and not (kept / 'mine.txt').exists() and (kept / 'backbone.safetensors').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kept']
