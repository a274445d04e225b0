import json, math
import pytest, torch
from nasiam.metrics import (CollapseDetector, alignment, collapse_metrics, effective_rank, feature_std, std_reference,
                            uniformity)
from nasiam.records import MetricsFormatError, MetricsTail, MetricsWriter, read_metrics, truncate_after


def test_collapsed_vs_healthy_batch():
    g = torch.Generator().manual_seed(0)
    healthy, point = torch.randn(4096, 64, generator=g), torch.randn(1, 64, generator=g).expand(32, 64)
    assert feature_std(point).item() == pytest.approx(0, abs=1e-6)
    assert effective_rank(point).item() == pytest.approx(1, abs=1e-4)
    assert feature_std(healthy).item() == pytest.approx(std_reference(64), rel=0.05)
    assert effective_rank(healthy).item() > 60
    assert alignment(healthy[:16], healthy[:16]).item() == 0
    assert uniformity(point).item() == pytest.approx(0, abs=1e-6) and uniformity(healthy[:256]).item() < -3


def test_collapse_metrics_keys_and_types():
    z = torch.randn(8, 16, requires_grad=True)
    m = collapse_metrics(z, z + 1)
    assert set(m) == {'z_std', 'z_std_ref', 'z_erank', 'align', 'uniform'}
    assert all(isinstance(v, float) for v in m.values())


@pytest.mark.parametrize('stream,fires', [([1e-5] * 10, True), ([0.02] * 10, False), ([1e-5, 0.02] * 5, False)])
def test_detector(stream, fires):
    det = CollapseDetector(patience=3)
    msgs = [det.update(z, 2048) for z in stream]
    assert sum(m is not None for m in msgs) == int(fires)


def test_detector_loss_floor():
    det = CollapseDetector(patience=2)
    msgs = [det.update(0.02, 2048, loss=-1.0, loss_floor=-1.0) for _ in range(4)]
    assert msgs[0] is None and 'loss' in msgs[1] and msgs[2:] == [None, None]


def test_writer_reader_round_trip_and_truncate(tmp_path):
    path, seen = tmp_path / 'r' / 'metrics.jsonl', []
    with MetricsWriter(path, callbacks=[seen.append]) as w:
        for s in range(5): w.log('step', step=s, epoch=0, loss=torch.tensor(0.5), bad=float('inf'))
    assert read_metrics(path) == seen and seen[0]['bad'] is None and seen[0]['loss'] == 0.5
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert truncate_after(path, 2) == 2
    assert [r['step'] for r in read_metrics(path)] == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == ['metrics.jsonl']  # no temp file left


def test_bad_and_partial_lines(tmp_path):
    p = tmp_path / 'm.jsonl'
    p.write_text('{"step": 1}\n"text"\n{"step": 3}\n{"st')
    with pytest.raises(MetricsFormatError, match=r'm\.jsonl, line 2'):
        read_metrics(p)
    assert read_metrics(p, strict=False) == [{'step': 1}, {'step': 3}]


def test_tail_only_new_complete_lines(tmp_path):
    p = tmp_path / 'm.jsonl'
    tail = MetricsTail(p)
    assert tail.poll() == []
    with MetricsWriter(p) as w:
        w.log('step', step=1)
        assert [r['step'] for r in tail.poll()] == [1]
        w.file.write('{"kind": "step", "st'); w.file.flush()
        assert tail.poll() == []
        w.file.write('ep": 2}\n'); w.file.flush()
        assert tail.poll() == [{'kind': 'step', 'step': 2}]
