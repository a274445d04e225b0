import html, threading, time
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from nasiam.dashboard import Dashboard, write_report
from nasiam.figures import alpha_atlas, alpha_heatmap, alpha_margins, alpha_trajectories, decision_sentence, genotype_text
from nasiam.metrics import DECISION_MARGIN, alpha_margin
from nasiam.records import MetricsWriter, RunHistory, read_metrics, write_demo_run


@pytest.fixture
def run_dir(tmp_path):
    with MetricsWriter(tmp_path / 'metrics.jsonl') as w: write_demo_run(w, epochs=3, steps_per_epoch=60)
    return tmp_path


def test_figures_from_records(run_dir):
    records = read_metrics(run_dir / 'metrics.jsonl')
    h = RunHistory.from_records(records)
    last = [r for r in records if r['kind'] == 'alphas'][-1]
    for cell, weights in last['cells'].items():
        heat = alpha_heatmap(h, cell).data[0]
        assert np.allclose(np.array(heat.customdata)[..., 0], weights)  # raw weights in the hover
        assert np.allclose(heat.z, np.array(weights) - 1 / 7) and heat.zmid == 0  # colour: deviation from uniform
        assert len(alpha_trajectories(h, cell).data) == len(weights) * 8  # 7 op lines + chosen-op marker per layer
    assert 'projector:' in genotype_text(h)


@pytest.mark.parametrize('alpha_cap', [500, 8])
def test_atlas_and_margins_match_the_records(run_dir, alpha_cap):
    records = read_metrics(run_dir / 'metrics.jsonl')
    alphas = [r for r in records if r['kind'] == 'alphas']
    h = RunHistory.from_records(records, alpha_cap=alpha_cap)
    for cell, n_layers in (('projector', 6), ('predictor', 4)):
        by_step = {r['step']: np.array(r['cells'][cell]) for r in alphas}
        atlas, margins = alpha_atlas(h, cell), alpha_margins(h, cell)
        steps = list(atlas.data[0].x)
        assert len(atlas.data) == n_layers and len(steps) <= alpha_cap
        if alpha_cap >= len(alphas): assert steps == list(by_step)  # every snapshot
        else: assert steps[0] == alphas[0]['step'] and steps[-1] == alphas[-1]['step'] and set(steps) < set(by_step)
        for l, trace in enumerate(atlas.data):  # op x step, weight - 1/7
            assert np.allclose(trace.z, np.stack([by_step[s][l] for s in steps], 1) - 1 / 7)
        expected = alpha_margin(torch.tensor(np.stack([by_step[s] for s in steps]))).numpy()  # (steps, layers)
        assert [list(t.x) for t in margins.data] == [steps] * n_layers
        assert np.allclose(np.array([t.y for t in margins.data]).T, expected, atol=1e-6)
        assert margins.layout.shapes[0].y0 == DECISION_MARGIN


def test_atlas_memory_is_bounded():
    h = RunHistory(alpha_cap=200)
    w = [[1 / 7] * 7] * 6
    for step in range(100_000): h.add(dict(kind='alphas', step=step, cells={'projector': w}))
    steps = list(alpha_atlas(h, 'projector').data[0].x)
    assert len(steps) <= 200 and steps[0] == 0 and steps[-1] == 99_999


def test_history_is_bounded():
    h = RunHistory(cap=1000)
    for i in range(100_000): h.add({'kind': 'step', 'step': i, 'epoch': 0, 'loss': i})
    steps, values = h.values('loss')
    assert len(steps) <= 1000 and steps[0] == 0 and steps[-1] == values[-1] == 99_999


def test_report(run_dir):
    page = write_report(run_dir).read_text()
    assert page.count('* plotly.js v') == 1 and 'demo-search' in page
    h = RunHistory.from_records(read_metrics(run_dir / 'metrics.jsonl'))
    assert genotype_text(h).splitlines()[0] in page
    body = page[page.index('<body>'):]
    assert body.index('Search decided') < body.index('<h2>')  # the verdict in words opens the report
    assert html.escape(decision_sentence(h)) in body and decision_sentence(h).startswith('Search decided')


def test_not_live_accumulates(run_dir):
    dash = Dashboard(live=False)
    for r in read_metrics(run_dir / 'metrics.jsonl'): dash(r)
    figs = dash.figures()
    assert dash.refreshes == 0 and all(isinstance(f, go.Figure) for f in figs.values())
    assert set(figs) >= {'alphas/projector', 'margins/projector', 'trajectories/predictor', 'atlas/predictor', 'loss', 'collapse', 'accuracy'}


def test_follow_a_run_being_written(tmp_path):
    def write():
        with MetricsWriter(tmp_path / 'metrics.jsonl') as w:
            write_demo_run(w, epochs=2, steps_per_epoch=40, sleep=0.01)
    writer = threading.Thread(target=write)
    dash = Dashboard(live=False)
    writer.start()
    t0 = time.monotonic()
    follower = dash.follow(tmp_path, poll_seconds=0.05, timeout=30)
    assert time.monotonic() - t0 < 0.5 and not follower.done  # returns at once, follows in the background
    assert follower.wait(30) and follower.done  # ends by itself at the run's end event
    writer.join()
    assert time.monotonic() - t0 > 0.5  # it waited for the writer
    assert dash.history.n_records == len(read_metrics(tmp_path / 'metrics.jsonl'))
    assert dash.history.values('loss')[0][-1] == 80


def test_follow_times_out_without_end(tmp_path):
    assert Dashboard(live=False).follow(tmp_path, poll_seconds=0.05, timeout=0.2, block=True) is False


class _SlowRefresh(Dashboard):
    "A live dashboard whose refresh takes 20 ms and draws nothing: only the pacing of `on_records` is under test."
    def refresh(self):
        t = time.monotonic(); time.sleep(0.02)
        self._refreshed(t)


@pytest.mark.parametrize('busy', [None, 0.2])
def test_refreshes_take_at_most_their_share_of_the_time(busy):
    dash = _SlowRefresh(live=True, every_steps=1, every_seconds=None, busy=busy)
    dash.on_records([dict(kind='config', step=0)])
    t0, step = time.monotonic(), 0
    while time.monotonic() - t0 < 1.0:  # a step record every 5 ms for a second, each one due a refresh
        step += 1; dash.on_records([dict(kind='step', step=step, loss=0.0, time=time.time())]); time.sleep(0.005)
    share = dash.refresh_total / dash.elapsed
    if busy is None: assert dash.refreshes == step + 1 and share > 0.5  # every due refresh
    else: assert 2 <= dash.refreshes <= 1 + 1.0 * busy / 0.02 + 1 and share <= busy * 1.5, (dash.refreshes, share)
    before = dash.refreshes
    dash.on_records([dict(kind='event', step=step, event='end', message='run finished')])  # events refresh at once, rested or not
    assert dash.refreshes == before + 1
