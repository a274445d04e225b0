"Decisions calibrated against a null: a search whose alpha gradients have random signs decides (almost) nothing."
import json
import pytest
import torch
from nasiam.config import RunConfig
from nasiam.strategies import DARTS1, STRATEGIES, register_strategy
from nasiam.genotype import Genotype


class SignFlip(DARTS1):
    "Test only: first-order DARTS with each layer's alpha gradient multiplied by a random sign at every step (no consistent direction)."
    name = 'test_signflip'
    def arch_grads(self, *args, **kwargs):
        loss, grads = super().arch_grads(*args, **kwargs)
        return loss, [g * (torch.randint(0, 2, (g.shape[0], 1), device=g.device) * 2 - 1).to(g.dtype) for g in grads]


@pytest.fixture
def signflip():
    register_strategy(SignFlip)
    yield SignFlip.name
    STRATEGIES.pop(SignFlip.name, None)


def quickstart(seed, strategy, **over):
    "The quickstart's search (nbs/experiments/quickstart.ipynb): SimSiam, digits, resnet_mini, 10 epochs, arch lr 0.1, 2 warm-up epochs."
    return RunConfig(**{**dict(framework='simsiam', dataset='digits', backbone='resnet_mini', batch_size=64, epochs=10, arch_lr=0.1,
                                arch_warmup_epochs=2, knn_k=20, log_every=1, val_fraction=0.1, seed=seed, device='cpu', strategy=strategy), **over})


@pytest.mark.slow
def test_quickstart_under_the_sign_flip_null_decides_at_most_one_layer(signflip, tmp_path):
    "The quickstart's search with sign-flipped alpha gradients: at most 1 of its 10 layers decided, in each of 3 seeds."
    from nasiam.train import search
    for seed in (0, 1, 2):
        res = search(quickstart(seed, signflip), tmp_path / f's{seed}', progress=False)
        decided = int(res['decided'].split('/')[0])
        assert res['decided'].endswith('/10') and decided <= 1, (seed, res['decided'], res['undecided'])


def test_synthetic_null_false_decision_rate():
    "Random-sign gradients fed to the rule directly (no network): the per-layer rate of p <= 0.05 is 0.05 within its standard error."
    import math
    from nasiam.metrics import SignFlipNull, DecisionTracker, adam_replay
    layers, steps, ops = 600, 30, 7
    g = torch.Generator().manual_seed(7)
    grads = torch.randn(steps, layers, ops, generator=g, dtype=torch.float64) * torch.rand(steps, layers, 1, generator=g, dtype=torch.float64)
    null = SignFlipNull(replays=99, seed=3); null.start({'c': torch.zeros(layers, ops)})
    for t in range(steps): null.record({'c': grads[t]})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=1e-3)
    null.advance(opt)
    zeros = lambda: torch.zeros(1, layers, ops, dtype=torch.float64)
    real = adam_replay(dict(alphas=zeros(), exp_avg=zeros(), exp_avg_sq=zeros(), step=0), grads, torch.ones(1, steps, layers, dtype=torch.float64),
                       [True] * steps, 0.1, (0.9, 0.999), 1e-8, 1e-3, True)['alphas'][0]
    rows = DecisionTracker(margin=0.001, patience=1).update({'c': real}, list('abcdefg'), null.null_alphas())['c']
    rate, se = sum(r['p_value'] <= 0.05 for r in rows) / layers, math.sqrt(0.05 * 0.95 / layers)
    assert abs(rate - 0.05) <= 3 * se, (rate, se)
    assert sum(r['decided'] for r in rows) <= 3  # Holm over 600 layers: (almost) nothing


def test_identical_candidates_are_equivalent():
    "A layer whose candidates compute one function is a tie among them: reported as equivalent, decided among distinct functions only."
    from torch import nn
    from nasiam.ops import SearchSpace, equivalent_ops, _published_pool
    from nasiam.metrics import layer_partitions, DecisionTracker
    space = SearchSpace('test_copies', {'lin_a': lambda i, o: nn.Linear(i, o), 'lin_b': lambda i, o: nn.Linear(i, o),
                                        'lin_c': lambda i, o: nn.Sequential(nn.Linear(i, o), nn.Identity()), 'pool': _published_pool('avg')},
                        families={'lin_a': 'linear', 'lin_b': 'linear', 'lin_c': 'linear', 'pool': 'pooling'})
    assert equivalent_ops(space, 8, 8) == [[0, 1, 2], [3]]
    parts = layer_partitions(space, [8, 8, 8])
    ops = list(space.primitives)
    a = torch.tensor([[0.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # layer 0: lin_b barely ahead of its copies; layer 1: all tied
    null = {'c': torch.randn(199, 2, 4, generator=torch.Generator().manual_seed(0))}
    l0, l1 = DecisionTracker(margin=0.03, patience=1).update({'c': a}, ops, null, {'c': parts})['c']
    assert l0['op'] == 'lin_b' and l0['equivalent'] == ['lin_a', 'lin_b', 'lin_c'] and l0['groups'] == [['lin_a', 'lin_b', 'lin_c'], ['pool']]
    w = a[0].softmax(-1)
    assert abs(l0['margin'] - (w[:3].sum() - w[3]).item()) < 1e-6  # the copies' weights add up: the margin is between functions
    assert l1['equivalent'] == ['lin_a', 'lin_b', 'lin_c'] and l1['family'] == 'linear'


def test_old_genotype_format_still_reads():
    from pathlib import Path
    from nasiam.genotype import load_genotype
    path = Path(__file__).parent / 'data' / 'genotype-format2.json'
    assert json.loads(path.read_text())['format'] == 'nasiam.genotype/2'
    g = load_genotype(str(path))
    assert g.confidence['rule'] == dict(margin=0.03, patience=3) and len(g.undecided()) == 10
    back = Genotype.from_json(g.to_json())  # rewritten in the current format, it reads back the same
    assert json.loads(g.to_json())['format'] == 'nasiam.genotype/3' and back == g and back.confidence == g.confidence


def test_null_resumes_exactly(tmp_path):
    "The null's checkpoint state, mid-epoch, through torch.save and a weights-only load: the resumed null replays exactly as an uninterrupted one."
    from nasiam.metrics import SignFlipNull
    grads = torch.randn(10, 6, 7, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=1e-3)
    def fresh():
        n = SignFlipNull(replays=50, seed=4); n.start({'projector': torch.zeros(6, 7)}); return n
    whole = fresh()
    for epoch in range(2):
        for g in grads: whole.record({'projector': g}, capacity=4)  # the buffer grows past its capacity without a host read
        whole.advance(opt)
    part = fresh()
    for g in grads: part.record({'projector': g}, capacity=4)
    part.advance(opt)
    for g in grads[:3]: part.record({'projector': g}, capacity=4)
    torch.save(dict(hooks=dict(SearchMonitor=dict(null=part.state_dict()))), tmp_path / 'ck.pt')
    resumed = SignFlipNull(replays=50, seed=99)
    resumed.load_state_dict(torch.load(tmp_path / 'ck.pt', weights_only=True)['hooks']['SearchMonitor']['null'])
    for g in grads[3:]: resumed.record({'projector': g}, capacity=4)
    resumed.advance(opt)
    assert torch.equal(resumed.null_alphas()['projector'], whole.null_alphas()['projector'])
    assert not torch.equal(whole.null_alphas()['projector'][0], whole.null_alphas()['projector'][1])  # replays differ from each other
