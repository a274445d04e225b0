"""W&B and MLflow as sinks of a run, offline: MLflow into a local file store read back through its client, W&B with
WANDB_MODE=offline read from its run files; a resumed run continues the same tracker run; a missing package stops a run
before anything is written. Each tracker's tests skip, saying why, where its package is not installed."""
import importlib.util, struct
from pathlib import Path
import pytest, torch

from conftest import cli
from nasiam.data import ImageData
from nasiam.records import read_metrics
from nasiam.train import load_checkpoint, search

HAS = {name: importlib.util.find_spec(name) is not None for name in ('wandb', 'mlflow')}
KW = dict(dataset='digits', backbone='resnet_mini', image_size=16, batch_size=16, device='cpu', precision='fp32', knn_k=5,
          log_every=1, monitor_every=1, progress=False, tracker_project='tests')


def tiny_data() -> ImageData:
    "96 images of 16 px in 4 classes (brightness tells them apart): a search epoch of two weight steps."
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(24)
    images = (torch.rand(96, 3, 16, 16, generator=g) * 80 + labels.view(-1, 1, 1, 1) * 40).to(torch.uint8)
    return ImageData('digits', images, labels, images[:8], labels[:8], list('abcd'), (0.5,) * 3, (0.25,) * 3, 16)


def search_and_resume(run: Path, **trackers) -> list:
    "A one-epoch search, then resumed to two; returns its metrics records."
    search(out=run, epochs=1, data=tiny_data(), **trackers, **KW)
    search(out=run, epochs=2, data=tiny_data(), resume=True, **trackers, **KW)
    return read_metrics(run / 'metrics.jsonl')


def last_alphas(records) -> dict:
    "The last alphas record's op weights, by tracker name."
    a = [r for r in records if r['kind'] == 'alphas'][-1]
    return {f"alphas/{cell}/{i}/{op}": w for cell, rows in a['cells'].items() for i, row in enumerate(rows) for op, w in zip(a['ops'], row)}


@pytest.mark.slow
@pytest.mark.skipif(not HAS['mlflow'], reason="mlflow not installed (pip install 'nasiam[mlflow]')")
def test_mlflow_file_store_read_back_and_resume(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # MLflow 3 keeps its file store behind this switch
    uri, run = (tmp_path / 'mlruns').as_uri(), tmp_path / 'run'
    records = search_and_resume(run, mlflow=True, mlflow_uri=uri)
    run_id = load_checkpoint(run / 'checkpoint.pt')['hooks']['MlflowTracker']['run_id']
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name('tests').experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the resume continued the run it started
    r = client.get_run(run_id)
    assert r.info.status == 'FINISHED' and r.data.params['framework'] == 'simsiam' and r.data.params['epochs'] == '1'
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, 'step/loss')]
    assert sorted(steps) == [(rec['step'], rec['loss']) for rec in records if rec['kind'] == 'step']  # both epochs, once each
    alphas = last_alphas(records)
    assert len(alphas) > 10 and all(r.data.metrics[k] == pytest.approx(v) for k, v in alphas.items())
    genotype = [rec['genotype'] for rec in records if rec['kind'] == 'epoch'][-1]
    assert r.data.tags['genotype'].splitlines()[0] == f"projector 0: {', '.join(genotype['projector'][0])}"
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {'report.html', 'genotype.txt'} <= arts
    report = Path(client.download_artifacts(run_id, 'report.html', str(tmp_path)))
    assert '<title>run</title>' in report.read_text() and report.stat().st_size == pytest.approx((run / 'report.html').stat().st_size, rel=0.01)


def wandb_records(path: Path) -> list:
    "The protobuf records of a W&B run file (`run-ID.wandb`: a LevelDB-style log of 32 KiB blocks, 7-byte record headers)."
    from wandb.proto import wandb_internal_pb2 as pb
    buf, out, part, pos, block = path.read_bytes(), [], b'', 7, 32768
    assert buf[:4] == b':W&B'
    while pos + 7 <= len(buf):
        if block - pos % block < 7: pos += block - pos % block; continue  # a block's tail too short for a header
        _, n, kind = struct.unpack('<IHB', buf[pos:pos + 7])
        if n == 0 and kind == 0: break
        part = buf[pos + 7:pos + 7 + n] if kind in (1, 2) else part + buf[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record(); rec.ParseFromString(part); out.append(rec)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS['wandb'], reason="wandb not installed (pip install 'nasiam[wandb]')")
def test_wandb_offline_run_files_and_resume(tmp_path, monkeypatch):
    import json
    key = lambda item: item.key or '/'.join(item.nested_key)  # W&B writes a name in one or the other
    monkeypatch.setenv('WANDB_MODE', 'offline')
    run = tmp_path / 'run'
    records = search_and_resume(run, wandb=True)
    run_id = load_checkpoint(run / 'checkpoint.pt')['hooks']['WandbTracker']['run_id']
    files = sorted((run / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert len(files) == 2 and all(f.name == f'run-{run_id}.wandb' for f in files)  # started, then resumed: one W&B run
    recs = [r for f in files for r in wandb_records(f)]
    assert {r.run.run_id for r in recs if r.WhichOneof('record_type') == 'run'} == {run_id}
    history = [{key(i): json.loads(i.value_json) for i in r.history.item} for r in recs if r.WhichOneof('record_type') == 'history']
    steps = [(h['global_step'], h['step/loss']) for h in history if 'step/loss' in h]
    assert steps == [(rec['step'], pytest.approx(rec['loss'])) for rec in records if rec['kind'] == 'step']
    logged = {k: v for h in history for k, v in h.items() if k.startswith('alphas/')}
    assert logged == pytest.approx(last_alphas(records))
    summary = {key(i): json.loads(i.value_json) for r in recs if r.WhichOneof('record_type') == 'summary' for i in r.summary.update}
    genotype = [rec['genotype'] for rec in records if rec['kind'] == 'epoch'][-1]
    assert summary['genotype'].splitlines()[-1] == f"predictor {len(genotype['predictor']) - 1}: {', '.join(genotype['predictor'][-1])}"
    arts = [r.artifact for r in recs if r.WhichOneof('record_type') == 'artifact']
    assert [a.type for a in arts] == ['report', 'report'] and all([e.path for e in a.manifest.contents] == ['report.html'] for a in arts)


def test_missing_tracker_package_stops_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'wandb', None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"wandb=True needs the wandb package, which is not installed: pip install 'nasiam\[wandb\]'"):
        search(out=tmp_path / 'run', epochs=1, data=tiny_data(), wandb=True, **KW)
    code, out, err = cli('search', '--dataset', 'digits', '--wandb', '--out', tmp_path / 'cli')
    assert code == 2 and err.strip().count('\n') == 0 and "pip install 'nasiam[wandb]'" in err
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'cli').exists()
