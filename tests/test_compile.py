"""`compile=True` on the CPU: the compiled search and pretraining steps give the eager losses (within bf16 tolerance) and
their checkpoints resume eagerly. torch.compile (inductor) compiles C++ kernels here: minutes on a small loaded CPU."""
import dataclasses
import pytest
import torch
from nasiam.data import ImageData, MEAN_STD
from nasiam.train import Run, RunConfig, load_checkpoint, resolve_precision

pytestmark = pytest.mark.slow
BATCH, STEPS = 8, 3


def _data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * BATCH, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(len(images)) % 2
    return ImageData('digits', images, labels, images[:8], labels[:8], ['a', 'b'], *MEAN_STD['cifar10'], 32)


def _losses(run: Run) -> list:
    "The losses of STEPS architecture (a search) and weight steps on fixed batches."
    idx, out = torch.arange(BATCH), []
    for _ in range(STEPS):
        if run.searching: out.append(run.arch_step(idx, idx)[0].item())
        out.append(run.weight_step(idx)['loss'].item())
        run.step += 1
    return out


@pytest.mark.parametrize('mode', ['search', 'pretrain'])
def test_compiled_steps_match_eager_and_resume(mode, tmp_path):
    precision = 'bf16' if resolve_precision('auto', torch.device('cpu')) == torch.bfloat16 else 'fp32'
    c = RunConfig(mode=mode, heads='search' if mode == 'search' else 'standard', backbone='resnet_mini', batch_size=BATCH, epochs=1,
                  device='cpu', precision=precision, knn_every=0)
    data = _data()
    eager = _losses(Run(c, tmp_path / 'eager', progress=False, data=data))
    compiled_run = Run(dataclasses.replace(c, compile=True), tmp_path / 'compiled', progress=False, data=data)
    assert compiled_run.forward is not compiled_run.ddp  # the step really runs a compiled module
    compiled = _losses(compiled_run)
    tol = 5e-2 if precision == 'bf16' else 1e-4
    assert torch.allclose(torch.tensor(compiled), torch.tensor(eager), rtol=tol, atol=tol), (compiled, eager)
    compiled_run.save()
    assert load_checkpoint(tmp_path / 'compiled' / 'checkpoint.pt')['step'] == STEPS
    resumed = Run(c, tmp_path / 'compiled', resume=True, progress=False, data=data)  # eager, from the compiled run's checkpoint
    assert resumed.step == STEPS
    for a, b in zip(resumed.model.state_dict().values(), compiled_run.model.state_dict().values()): assert torch.equal(a, b)
