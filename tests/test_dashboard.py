import threading, time
import plotly.graph_objects as go
import pytest
from nasiam.dashboard import (Dashboard, RunHistory, alpha_heatmap, alpha_trajectories, genotype_text,
                              write_demo_run, write_report)
from nasiam.metrics import MetricsWriter, read_metrics


@pytest.fixture
def run_dir(tmp_path):
    with MetricsWriter(tmp_path / 'metrics.jsonl') as w: write_demo_run(w, epochs=3, steps_per_epoch=60)
    return tmp_path


def test_figures_from_records(run_dir):
    records = read_metrics(run_dir / 'metrics.jsonl')
    h = RunHistory.from_records(records)
    last = [r for r in records if r['kind'] == 'alphas'][-1]
    for cell, weights in last['cells'].items():
        assert [list(r) for r in alpha_heatmap(h, cell).data[0].z] == weights
        assert len(alpha_trajectories(h, cell).data) == len(weights) * 8  # 7 op lines + chosen-op marker per layer
    assert 'projector:' in genotype_text(h)


def test_history_is_bounded():
    h = RunHistory(cap=1000)
    for i in range(100_000): h.add({'kind': 'step', 'step': i, 'epoch': 0, 'loss': i})
    steps, values = h.values('loss')
    assert len(steps) <= 1000 and steps[0] == 0 and steps[-1] == values[-1] == 99_999


def test_report(run_dir):
    page = write_report(run_dir).read_text()
    assert page.count('* plotly.js v') == 1 and 'demo-search' in page
    assert genotype_text(RunHistory.from_records(read_metrics(run_dir / 'metrics.jsonl'))).splitlines()[0] in page


def test_not_live_accumulates(run_dir):
    dash = Dashboard(live=False)
    for r in read_metrics(run_dir / 'metrics.jsonl'): dash(r)
    figs = dash.figures()
    assert dash.refreshes == 0 and all(isinstance(f, go.Figure) for f in figs.values())
    assert set(figs) >= {'alphas/projector', 'trajectories/predictor', 'loss', 'collapse', 'accuracy'}


def test_follow_a_run_being_written(tmp_path):
    def write():
        with MetricsWriter(tmp_path / 'metrics.jsonl') as w:
            write_demo_run(w, epochs=2, steps_per_epoch=40, sleep=0.01)
    writer = threading.Thread(target=write)
    dash = Dashboard(live=False)
    writer.start()
    t0 = time.monotonic()
    assert dash.follow(tmp_path, poll_seconds=0.05, timeout=30)
    writer.join()
    assert time.monotonic() - t0 > 0.5  # it waited for the writer
    assert dash.history.n_records == len(read_metrics(tmp_path / 'metrics.jsonl'))
    assert dash.history.values('loss')[0][-1] == 80


def test_follow_times_out_without_end(tmp_path):
    assert Dashboard(live=False).follow(tmp_path, poll_seconds=0.05, timeout=0.2) is False
