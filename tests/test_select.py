"Selection by contribution (DARTS-PT): the candidate that matters wins, identical candidates tie, a bad run directory is one sentence and exit 2."
import json
from dataclasses import asdict
import torch
from nasiam.cli import main
from nasiam.config import RunConfig
from nasiam.frameworks import build_model
from nasiam.genotype import load_genotype
from nasiam.selection import contributions, decide_layer


class Zero(torch.nn.Module):
    "A candidate that contributes nothing."
    def forward(self, x): return torch.zeros_like(x)


def _features(dim, batches=4, n=32, seed=0):
    "Held-out feature pairs: two noisy views of the same random vectors."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(n, dim, generator=g)
        out.append((x + 0.1 * torch.randn(n, dim, generator=g), x + 0.1 * torch.randn(n, dim, generator=g)))
    return out


def test_the_candidate_that_matters_wins_and_identical_candidates_tie():
    "A constructed MoCo supernet: in projector layer 1 only linear_elu computes anything (and the weights favour another op); layer 3 holds seven copies of one module."
    torch.manual_seed(0)
    model = build_model('moco', 'search', 'resnet_mini').eval()
    cell = model.search_cells()['projector']
    prims = cell.primitives
    l1, l3 = cell.layers[1], cell.layers[3]
    l1.ops = torch.nn.ModuleList(op if name == 'linear_elu' else Zero() for name, op in zip(prims, l1.ops))
    l3.ops = torch.nn.ModuleList([l3.ops[4]] * len(prims))
    with torch.no_grad(): cell.alphas[1, prims.index('identity')] = 2.0  # contribution must not follow the weights
    drops = contributions(model, _features(model.backbone.feat_dim, batches=3))['projector']
    weights = cell.weights().detach()
    row, det = decide_layer(drops[1], prims, weights[1])
    assert (row['op'], row['decided'], det['ties']) == ('linear_elu', True, []), det
    assert det['weight_op'] == 'identity' and not det['agrees']  # weight and contribution disagree, and the selection says so
    assert row['margin'] > 0 and all(abs(det['drop'][o]) < det['drop']['linear_elu'] / 10 for o in prims if o != 'linear_elu'), det['drop']
    assert set(row) == {'op', 'weight', 'margin', 'entropy', 'stable_epochs', 'decided'}
    assert abs(det['drop']['identity']) < 1e-5  # removing a candidate that adds nothing changes nothing
    row, det = decide_layer(drops[3], prims, weights[3])
    assert not row['decided'] and sorted(det['ties'] + [row['op']]) == sorted(prims)


def test_select_cli(tmp_path, capsys):
    "`nasiam select RUN` writes genotype-pt.json (a genotype file) and selection.json; a bad run directory is one sentence and exit 2."
    run = tmp_path / 'search'
    run.mkdir()
    c = RunConfig(mode='search', framework='simclr', dataset='digits', backbone='resnet_mini', seed=0)
    torch.save(dict(model=build_model('simclr', 'search', 'resnet_mini').state_dict(), config=asdict(c), step=0, epoch=0), run / 'checkpoint.pt')
    assert main(['select', str(run), '--batches', '2', '--batch-size', '16', '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert 'selection by contribution' in out and 'layers decided' in out
    g = load_genotype(str(run / 'genotype-pt.json'), 'simclr')
    assert len(g.projector) == 6 and len(g.confidence['projector']) == 6
    sel = json.loads((run / 'selection.json').read_text())
    assert sel['batches'] == 2 and all(len(l['drop']) == 7 for l in sel['layers'])
    for bad, says in ((tmp_path / 'nowhere', 'does not exist'), (tmp_path, 'holds no supernet (no checkpoint.pt)')):
        assert main(['select', str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    # a pretraining run holds no supernet
    pre = tmp_path / 'pretrain'; pre.mkdir()
    cp = RunConfig(mode='pretrain', heads='standard', framework='simclr', dataset='digits', backbone='resnet_mini')
    torch.save(dict(model=build_model('simclr', 'standard', 'resnet_mini').state_dict(), config=asdict(cp), step=0, epoch=0), pre / 'checkpoint.pt')
    assert main(['select', str(pre)]) == 2
    assert 'holds a pretrain run, not a supernet' in capsys.readouterr().err
