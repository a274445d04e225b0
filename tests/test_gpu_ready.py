"""No host read on a step that is not logged, and a few on a logged one, for every framework, searching and pretraining.

A host read (`item`, `bool`, `float`, `tolist`, `cpu` of a tensor) would make a GPU's host wait for its queue. The
counters wrap those methods and count the reads made between one step's `before_step` and the next's, so everything
the loop does for a step counts: the architecture and weight steps, the hooks, the record, the checkpoints. On the
CPU every tensor is on the model's device, so nothing is left out by device: the data path's index handling is
counted too, and it makes no read.
"""
import threading
import pytest
import torch
from nasiam.records import read_metrics
from nasiam.frameworks import FRAMEWORKS
from nasiam.hooks import Hook, StopRun
from nasiam.train import Run, RunConfig

READS = ('item', '__bool__', '__float__', 'tolist', 'cpu')
STEPS, LOG_EVERY = 40, 10  # logged steps: 1, 10, 20, 30, 40


class ReadsPerStep(Hook):
    "The host reads of each step (counted from its before_step to the next), and a stop after `steps` steps."
    def __init__(self, count:list, steps:int): self.count, self.steps, self.marks = count, steps, []
    def before_step(self, run):
        self.marks.append(self.count[0])
        if run.step == self.steps: raise StopRun('measured')
    def per_step(self) -> dict: return {i + 1: b - a for i, (a, b) in enumerate(zip(self.marks, self.marks[1:]))}


@pytest.fixture
def count(monkeypatch):
    "A counter of host reads, with every read method wrapped while the test runs."
    n = [0]
    for name in READS:
        def counted(self, *a, _real=getattr(torch.Tensor, name), **k):
            n[0] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return n


@pytest.mark.parametrize('mode', ['search', 'pretrain'])
@pytest.mark.parametrize('framework', FRAMEWORKS)
def test_unlogged_steps_make_no_host_read(framework, mode, count, tmp_path):
    c = RunConfig(mode=mode, heads='search' if mode == 'search' else 'standard', framework=framework, backbone='resnet_mini',
                  batch_size=12, epochs=1, device='cpu', precision='fp32', knn_every=0, log_every=LOG_EVERY, monitor_every=LOG_EVERY,
                  options={'queue_size': 64} if framework == 'moco' else {})
    hook = ReadsPerStep(count, STEPS)
    run = Run(c, tmp_path / 'run', progress=False, hooks=[hook])
    assert run.steps_per_epoch > STEPS  # no epoch end among the measured steps
    run.fit()
    reads = hook.per_step()
    logged = {s: n for s, n in reads.items() if s == 1 or s % LOG_EVERY == 0}
    unlogged = {s: n for s, n in reads.items() if s not in logged}
    assert len(reads) == STEPS and unlogged and logged
    assert set(unlogged.values()) == {0}, {s: n for s, n in unlogged.items() if n}
    # the loss, the rates, the flags, the collapse metrics, the gradient norms, the alphas' record: a fixed few, whatever the model's size
    assert max(logged.values()) <= 24, logged
    print(framework, mode, 'reads on logged steps', logged)


class HeldSink:
    "A sink that takes nothing in until it is let go: a figure that never finishes drawing."
    def __init__(self): self.go, self.records = threading.Event(), []
    def on_records(self, records): self.go.wait(); self.records += records

class LetGo(Hook):
    "Lets the sink go at step `at`, noting what it had taken in by then."
    def __init__(self, sink, at): self.sink, self.at, self.taken = sink, at, None
    def after_step(self, run, step):
        if run.step == self.at: self.taken = len(self.sink.records); self.sink.go.set()


@pytest.mark.slow  # about 15 s of CPU
def test_the_loop_does_not_wait_for_a_sink_and_checkpoints_follow_the_file(tmp_path, monkeypatch, digits):
    import nasiam.train as train
    saved = []  # (step a checkpoint names, last step in metrics.jsonl as it is written)
    real = train.atomic_save
    def spy(obj, path):
        if path.name == 'checkpoint.pt':
            steps = [r.get('step', 0) for r in read_metrics(path.parent / 'metrics.jsonl') if r['kind'] == 'step']
            saved.append((obj['step'], max(steps)))
        return real(obj, path)
    monkeypatch.setattr(train, 'atomic_save', spy)
    sink = HeldSink()
    hook = LetGo(sink, 15)
    c = RunConfig(mode='pretrain', heads='standard', backbone='resnet_mini', dataset='digits', batch_size=64, epochs=1, device='cpu',
                  precision='fp32', knn_every=0, log_every=1, checkpoint_every=5)
    res = Run(c, tmp_path / 'run', progress=False, data=digits, callbacks=[sink], hooks=[hook]).fit()
    assert hook.taken == 0  # 15 steps went by while the sink had drawn nothing
    records = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
    assert sink.records == records and records[-1]['event'] == 'end'  # drained at the end: the sink got every record, in order
    assert saved and all(named == in_file for named, in_file in saved), saved  # every checkpoint's step was in the file first
    assert res['steps'] == saved[-1][0]


def test_an_error_drains_the_records(tmp_path, digits):
    class Fail(Hook):
        def after_step(self, run, step):
            if run.step == 3: run.log('event', event='note', message='before the error'); raise KeyError('planted')
    seen = []
    c = RunConfig(mode='pretrain', heads='standard', backbone='resnet_mini', dataset='digits', batch_size=64, epochs=1, device='cpu',
                  precision='fp32', knn_every=0, log_every=1)
    with pytest.raises(KeyError, match='planted'): Run(c, tmp_path / 'run', progress=False, data=digits, callbacks=[seen.append], hooks=[Fail()]).fit()
    records = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
    assert records[-2]['message'] == 'before the error' and seen == records
    assert (records[-1]['event'], records[-1]['message']) == ('failed', "KeyError: 'planted'")  # the run says why it ended
