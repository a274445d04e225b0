"""The collapse alarm on real runs: SimSiam without its stop-gradient (the SimSiam paper's collapse ablation) against
the default SimSiam, same data (digits), backbone, batch, learning rate and budget, default CollapseDetector."""
import pytest

from nasiam.records import read_metrics
from nasiam.train import pretrain

# the same budget for both runs; a measurement (and a detector update) at every step
BUDGET = dict(epochs=3, batch_size=64, lr=0.5, dataset='digits', backbone='resnet_mini', device='cpu', precision='fp32',
              log_every=1, monitor_every=1, knn_every=0, progress=False)


def run(out, digits, stop_gradient: bool) -> tuple[list, list]:
    "Pretrain SimSiam (standard heads); returns its step records (with collapse metrics) and its events."
    pretrain(out=out, data=digits, framework='simsiam', options={'stop_gradient': stop_gradient}, **BUDGET)
    records = read_metrics(out / 'metrics.jsonl')
    steps = [r for r in records if r['kind'] == 'step']
    assert len(steps) == steps[-1]['step'] and all('z_std' in r for r in steps)  # measured at every step
    return steps, [r for r in records if r['kind'] == 'event']


@pytest.fixture(scope='module')
def runs(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp('collapse')
    return {sg: run(root / f'stop_gradient_{sg}', digits, sg) for sg in (True, False)}


@pytest.mark.slow
def test_default_simsiam_does_not_collapse(runs):
    steps, events = runs[True]
    assert [e['event'] for e in events] == ['start', 'end'], events
    last = steps[-1]
    assert last['z_std'] > 0.5 * last['z_std_ref'], last
    assert last['loss'] > -0.9, last


@pytest.mark.slow
def test_no_stop_gradient_collapses_faster(runs):
    (sg, _), (nosg, _) = runs[True], runs[False]
    assert nosg[-1]['loss'] < sg[-1]['loss'] - 0.1, (nosg[-1], sg[-1])  # it heads for the floor, -1
    assert nosg[-1]['z_erank'] < 0.7 * sg[-1]['z_erank'], (nosg[-1], sg[-1])  # its embeddings lose dimensions


@pytest.mark.slow
def test_no_stop_gradient_raises_the_alarm(runs):
    steps, events = runs[False]
    alarms = [e for e in events if e['event'] == 'collapse']
    assert len(alarms) == 1, f"no collapse event in {steps[-1]['step']} steps: {steps[-1]}"
    # SimSiam's z leaves a BatchNorm, so its std stays near 1/sqrt(d): the collapse shows in the effective rank
    assert 'effective rank' in alarms[0]['message'] or 'loss' in alarms[0]['message'], alarms[0]
    print(f"collapse alarm at step {alarms[0]['step']} (epoch {alarms[0]['epoch'] + 1}): {alarms[0]['message']}")
