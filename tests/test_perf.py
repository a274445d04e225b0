"The architecture step computes only what it needs, and what it computes is what a full backward gives."
import copy
import pytest
import torch
from nasiam.data import ImageData
from nasiam.frameworks import FRAMEWORKS, build_model
from nasiam.ops import set_fused
from nasiam.train import Run, RunConfig

OPTIONS = {'moco': {'queue_size': 64}}  # every other framework: its defaults


def _model(framework, fused=False):
    torch.manual_seed(0)
    m = build_model(framework, 'search', 'resnet_mini', **OPTIONS.get(framework, {}))
    with torch.no_grad():  # non-uniform mixing weights, so every op's gradient path counts
        for a in m.arch_parameters(): a.normal_()
    return set_fused(m, fused)


def _views(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('framework', FRAMEWORKS)
def test_arch_grads_equal_full_backward(framework, fused):
    "Alpha gradients of the arch-step path (no backbone graph, no state update) equal a full backward's."
    model = _model(framework, fused)
    x1, x2 = _views()
    lean, full = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(2)  # MoCo draws its shuffle-BN permutation: identical RNG state on both paths
    loss = lean(x1, x2, update_state=False, backbone_grad=False)['loss']
    grads = torch.autograd.grad(loss, lean.arch_parameters())
    assert all(p.grad is None for p in lean.parameters())  # nothing but the alphas was differentiated
    torch.manual_seed(2)
    loss_full = full(x1, x2, update_state=False)['loss']
    loss_full.backward()
    torch.testing.assert_close(loss, loss_full)
    assert len(grads) == sum(n > 0 for n in FRAMEWORKS[framework].search_layers)
    for g, a in zip(grads, full.arch_parameters()):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, a.grad, rtol=1e-4, atol=1e-7)
    # the full backward did reach the backbone; the lean path built no graph there
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in full.backbone.parameters())


def test_fused_heads_same_alpha_grads():
    "The fused mixed layers give the reference form's alpha gradients."
    x1, x2 = _views()
    grads = []
    for fused in (False, True):
        m = _model('simsiam', fused)
        loss = m(x1, x2, update_state=False, backbone_grad=False)['loss']
        grads.append(torch.autograd.grad(loss, m.arch_parameters()))
    for a, b in zip(*grads): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _run(framework, tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(60) % 2
    data = ImageData('digits', images, labels, images[:8], labels[:8], ['a', 'b'], (0.5,) * 3, (0.25,) * 3, 32)
    c = RunConfig(mode='search', framework=framework, backbone='resnet_mini', batch_size=8, epochs=1,
                  device='cpu', precision='fp32', options=dict(OPTIONS.get(framework, {})))
    return Run(c, tmp_path / framework, progress=False, data=data)


def _params(module): return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize('framework', FRAMEWORKS)
def test_arch_step_moves_only_alphas(framework, tmp_path):
    "Run.arch_step changes the alphas and nothing else that is learnt: no weight, and nothing the framework declares in state_modules (momentum encoders, queues)."
    run = _run(framework, tmp_path)
    m = run.model
    arch = {id(a) for a in m.arch_parameters()}
    before = {n: p.detach().clone() for n, p in m.named_parameters() if id(p) not in arch}
    alphas = [a.detach().clone() for a in m.arch_parameters()]
    state = {name: {n: t.detach().clone() for n, t in getattr(m, name).named_parameters()} | dict(_queues(getattr(m, name)))
             for name in m.state_modules}
    run.arch_step(next(iter(run.data.arch_stream.epoch_batches())))
    after = dict(m.named_parameters())
    for n, p in before.items(): assert torch.equal(p, after[n]), n  # includes the key encoder / target network
    assert all(not torch.equal(a, b) for a, b in zip(alphas, m.arch_parameters()))
    assert all(p.grad is None for n, p in m.named_parameters() if id(p) not in arch)
    for name, tensors in state.items():
        now = {n: t for n, t in getattr(m, name).named_parameters()} | dict(_queues(getattr(m, name)))
        for n, t in tensors.items(): assert torch.equal(t, now[n]), f"{name}.{n}"
    if m.state_modules:  # ... while a weight step does move them (the check can fail)
        run.weight_step(next(iter(run.data.weight_stream.epoch_batches())))
        for name, tensors in state.items():
            now = {n: t for n, t in getattr(m, name).named_parameters()} | dict(_queues(getattr(m, name)))
            assert any(not torch.equal(t, now[n]) for n, t in tensors.items()), name
    if framework == 'moco': assert int(m.queue.queue_ptr) == 16


def _queues(module):
    "A module's buffers other than BatchNorm statistics (a momentum copy runs in training mode and may update those)."
    bn = {n for n, mod in module.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    return {n: b.detach().clone() for n, b in module.named_buffers() if n.rpartition('.')[0] not in bn}.items()
