"""Search strategies inside real runs: darts1 unchanged bit for bit, darts2 and gdas search end to end."""
import importlib.util
from pathlib import Path
import pytest
import torch

REF = Path(__file__).with_name('data') / 'darts1_reference.pt'


def _reference_module():
    spec = importlib.util.spec_from_file_location('make_darts1_reference', REF.with_name('make_darts1_reference.py'))
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('framework', ['simsiam', 'moco', 'simclr'])
def test_darts1_search_is_bit_identical_to_the_recorded_one(framework):
    "The three recorded darts1 searches (fp32, one thread) give the same genotype and alphas, bit for bit."
    mod = _reference_module()
    ref = torch.load(REF, weights_only=True)
    if ref['cpu'] != mod.cpu_model() or ref['torch'] != str(torch.__version__):
        pytest.skip(f"the reference was recorded with torch {ref['torch']} on {ref['cpu']}; float rounding differs on "
                    f"{mod.cpu_model()} with torch {torch.__version__} (regenerate it there to pin this machine)")
    got, want = mod.run(framework), ref['cases'][framework]
    assert got['genotype'] == want['genotype']
    assert want['alphas'].keys() == got['alphas'].keys()
    for k, v in want['alphas'].items(): assert torch.equal(got['alphas'][k], v), k
