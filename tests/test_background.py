"Background runs: the handle's states, one run per folder, resume after stop, and a follow that does not block."
import json, time
import pytest
import torch
from nasiam.background import start_search
from nasiam.dashboard import Dashboard
from nasiam.hooks import Hook, StopRun
from nasiam.runs import run_summary
from nasiam.train import load_checkpoint

FAST = dict(dataset='digits', backbone='resnet_mini', batch_size=64, epochs=2, knn_every=0, precision='fp32', device='cpu',
            val_fraction=0.5, log_every=1, seed=0)


class StopAt(Hook):
    "Stops the run after step `n` (a request, as the dashboard's button), or raises `error` there."
    def __init__(self, n, error=None): self.n, self.error = n, error
    def after_step(self, run, step):
        if run.step == self.n:
            if self.error: raise self.error
            run.stop_requested = True


class Pace(Hook):
    "Waits after each step, so that a run of a few steps lasts long enough to act on (its numbers are unchanged)."
    def __init__(self, seconds): self.seconds = seconds
    def after_step(self, run, step): time.sleep(self.seconds)


def alphas(out):
    return {k: v for k, v in load_checkpoint(out / 'checkpoint.pt')['model'].items() if k.endswith('alphas')}


def test_running_then_done(tmp_path, digits):
    dash = Dashboard(live=False)
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, callbacks=[dash], **FAST)
    assert h.status == 'running' and not h.done and 'running' in repr(h)
    result = h.wait(300)
    assert h.done and h.status == 'done' and h.result is result and h.error is None
    assert result['steps'] == h.run.total_steps and 'stopped' not in result
    assert dash.history.ended and dash.refreshes == 0  # a not-live dashboard as a callback only accumulates
    assert f'{h.run.total_steps}/{h.run.total_steps}' in repr(h)


def test_refuses_a_second_run_on_one_folder(tmp_path, digits):
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, **FAST)
    with pytest.raises(ValueError, match=r"is not accepted; a background run is using it") as e:
        start_search(out=tmp_path / 'run', data=digits, progress=False, force=True, **FAST)
    assert str(e.value).count('. ') == 0  # one sentence
    h.stop(wait=True)
    assert h.status == 'stopped'
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert sum(r['kind'] == 'config' for r in records) == 1  # the refused call wrote nothing (force=True would have started over)
    # a finished handle frees its folder
    assert start_search(out=tmp_path / 'run', data=digits, progress=False, resume=True, **FAST).wait(300)['steps'] == h.run.total_steps


def test_stop_from_outside(tmp_path, digits):
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, **{**FAST, 'epochs': 3})
    h.stop()  # returns at once
    result = h.wait(300)
    assert h.status == 'stopped' and 'stopped' in result and result['steps'] < h.run.total_steps
    assert (tmp_path / 'run' / 'checkpoint.pt').is_file()


def test_failed_run_reraises(tmp_path, digits):
    dash = Dashboard(live=True, every_steps=None, every_seconds=None)
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, callbacks=[dash], hooks=[StopAt(2, RuntimeError('boom at 2'))], **FAST)
    with pytest.raises(RuntimeError, match='boom at 2'): h.wait(300)
    assert h.status == 'failed' and isinstance(h.error, RuntimeError) and h.result is None
    line = dash.status_line.value  # the dashboard shows the end state and the error
    assert 'data-state="failed"' in line and 'RuntimeError: boom at 2' in line and all(b.disabled for b in dash.buttons.values())
    assert run_summary(tmp_path / 'run')['status'] == 'failed'  # and so do the run's files, at once
    events = [r['event'] for r in map(json.loads, (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()) if r['kind'] == 'event']
    assert events[-1] == 'failed' and 'end' not in events


@pytest.mark.slow
def test_dashboard_buttons_checkpoint_and_stop_a_run(tmp_path, digits):
    dash = Dashboard(live=True, every_steps=None, every_seconds=None)
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, callbacks=[dash], hooks=[Pace(0.2)], **{**FAST, 'epochs': 3})
    assert dash.handle is h and [b.description for b in dash.buttons.values()] == ['Stop', 'Checkpoint now']
    dash.buttons['checkpoint'].click()
    deadline = time.monotonic() + 120
    while not dash.note.startswith('checkpoint written') and time.monotonic() < deadline: time.sleep(0.05)
    assert dash.note.startswith('checkpoint written') and h.status == 'running', (dash.note, h.status)
    written = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['step']
    assert 0 < written < h.run.steps_per_epoch  # mid-epoch: the button's checkpoint, not an epoch's
    while len(dash.pace) < 2 and time.monotonic() < deadline: time.sleep(0.05)  # images/s needs two step records
    dash.refresh()
    assert 'data-state="running"' in dash.status_line.value and 'images/s' in dash.status_line.value and 'left' in dash.status_line.value
    dash.buttons['stop'].click()
    result = h.wait(300)
    assert h.status == 'stopped' and result['steps'] < h.run.total_steps
    assert 'data-state="stopped"' in dash.status_line.value and 'checkpoint.pt written' in dash.status_line.value
    assert load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['step'] == result['steps']
    assert run_summary(tmp_path / 'run')['status'] == 'stopped'


@pytest.mark.parametrize('at,stop', [(7, None), (5, None), (5, StopRun('enough'))], ids=['mid-epoch', 'epoch-end', 'epoch-end-hook'])
def test_resume_after_stop_matches_an_uninterrupted_run(tmp_path, digits, at, stop):
    whole = start_search(out=tmp_path / 'whole', data=digits, progress=False, **FAST).wait(300)
    h = start_search(out=tmp_path / 'parts', data=digits, progress=False, hooks=[StopAt(at, stop)], **FAST)
    assert h.wait(300)['stopped'] == (str(stop) if stop else 'stop requested') and h.run.step == at and h.run.steps_per_epoch == 5  # 5: the first epoch's last step
    assert load_checkpoint(tmp_path / 'parts' / 'checkpoint.pt')['epoch'] == at // 5  # an epoch's last step: the stop follows its end
    resumed = start_search(out=tmp_path / 'parts', data=digits, progress=False, resume=True, **FAST).wait(300)
    assert resumed['steps'] == whole['steps']
    a, b = alphas(tmp_path / 'whole'), alphas(tmp_path / 'parts')
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    genotype = lambda out: {k: v for k, v in json.loads((out / 'genotype.json').read_text()).items() if k in ('projector', 'predictor')}
    assert genotype(tmp_path / 'whole') == genotype(tmp_path / 'parts')


def test_follow_a_background_run(tmp_path, digits):
    h = start_search(out=tmp_path / 'run', data=digits, progress=False, **FAST)
    dash = Dashboard(live=False)
    t0 = time.monotonic()
    follower = dash.follow(tmp_path / 'run', poll_seconds=0.05)
    assert time.monotonic() - t0 < 0.5 and not follower.done  # returns at once
    assert follower.wait(300) and follower.done  # ends by itself at the run's end event
    h.wait(300)
    assert dash.history.ended


def test_follow_stop(tmp_path):
    follower = Dashboard(live=False).follow(tmp_path, poll_seconds=0.05)  # nothing written: would follow forever
    assert not follower.done
    follower.stop()
    assert follower.wait(2) is False and follower.done
