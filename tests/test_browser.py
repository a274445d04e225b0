"""Real-browser checks of the dashboard: the static report, and live figures in JupyterLab.

Needs Chromium (Debian package `chromium`) and the Python `playwright` package; no downloaded browsers.
"""
import contextlib, io, json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

from nasiam.cli import main as nasiam_main
from nasiam.dashboard import write_report
from nasiam.records import MetricsWriter, read_metrics, write_demo_run
from nasiam.train import search

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync']
try: from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright
except ImportError: sync_playwright = None
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason='chromium not on PATH (apt-get install chromium)'),
              pytest.mark.skipif(sync_playwright is None, reason='python package playwright not installed')]

# The notebook run live in JupyterLab: a live Dashboard drawn while a short real CPU search writes its records.
LIVE_NOTEBOOK_CELLS = [
    "from nasiam.train import search\n"
    "from nasiam.dashboard import Dashboard",
    "dash = Dashboard(live=True, every_steps=1, every_seconds=1.0).show()\n"
    "res = search(out='runs/live', epochs=1, batch_size=64, dataset='digits', backbone='resnet_mini', device='cpu',\n"
    "             log_every=1, knn_k=20, force=True, callbacks=[dash], progress=False)\n"
    "print('run finished', res['genotype'])",
]


def live_notebook() -> dict:
    "The notebook (nbformat 4 JSON) that the live test runs."
    cells = [dict(cell_type='code', metadata={}, source=src, outputs=[], execution_count=None, id=f'c{i}')
             for i, src in enumerate(LIVE_NOTEBOOK_CELLS)]
    return dict(cells=cells, metadata=dict(kernelspec=dict(name='python3', display_name='Python 3 (ipykernel)', language='python')),
                nbformat=4, nbformat_minor=5)


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# _fullData: the traces as Plotly drew them (numpy arrays arrive base64-encoded in `data`, decoded in `_fullData`)
PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(
    el => (el._fullData || []).map(t => ({type: t.type, n: (t.z || t.y || []).length,
                                          z: Array.isArray(t.z) && t.z.every(Array.isArray) ? t.z : null})))"""


def open_report(browser, report: Path, n_plots: int, screenshot: Path) -> list:
    "Open a report offline in Chromium, wait for its figures to be drawn, screenshot it; returns its traces."
    page = browser.new_page(viewport=dict(width=1300, height=1000))
    page.route(lambda url: not url.startswith('file:'), lambda route: route.abort())  # the page must need no network
    page.goto(report.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_plots}", timeout=30_000)
    plots = page.evaluate(PLOTS_JS)
    page.screenshot(path=screenshot, full_page=True)
    assert len(plots) == n_plots and all(plots), plots
    assert any(t['type'] == 'heatmap' for p in plots for t in p)
    assert all(t['n'] > 0 for p in plots for t in p), plots
    return plots


N_PLOTS = 11  # 2 cells x (heatmap, margins, trajectories, atlas), loss, collapse, accuracy

# As Plotly drew them: per heatmap and per atlas, the colour range and the data's min and max; per trajectory
# subplot, the y range and the data's min and max.
DRAWN_RANGES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => {
    const title = (el._fullLayout.title && el._fullLayout.title.text) || '';
    const flat = z => { const out = []; const walk = v => {  // arrays, and the typed arrays numpy data arrive as
        if (typeof v === 'number') { if (isFinite(v)) out.push(v); } else if (v != null) for (const x of v) walk(x); };
        walk(z); return out; };
    const heat = el._fullData.filter(t => t.type === 'heatmap');
    const out = {title, heatmaps: [], axes: []};
    for (const t of heat) {
        const z = flat(t.z), ax = t.coloraxis ? el._fullLayout[t.coloraxis] : null;
        out.heatmaps.push({lo: ax ? ax.cmin : t.zmin, hi: ax ? ax.cmax : t.zmax, min: Math.min(...z), max: Math.max(...z)});
    }
    if (title.includes('over steps')) for (const t of el._fullData.filter(t => t.type === 'scatter' && t.mode === 'lines')) {
        const name = 'yaxis' + (t.yaxis === 'y' ? '' : t.yaxis.slice(1)), ys = flat(t.y), r = el._fullLayout[name].range;
        let a = out.axes.find(a => a.name === name);
        if (!a) out.axes.push(a = {name, lo: r[0], hi: r[1], min: Infinity, max: -Infinity});
        a.min = Math.min(a.min, ...ys); a.max = Math.max(a.max, ...ys);
    }
    return out; })"""


def check_scales(page, ratio: float=5.0) -> list:
    "Every heatmap's colour range and every trajectory axis's y range, as drawn, covers its data and spans at most `ratio` x its spread."
    drawn = page.evaluate(DRAWN_RANGES_JS)
    heatmaps = [(d['title'], h) for d in drawn if 'op weights at step' in d['title'] for h in d['heatmaps']]
    atlases = [(d['title'], dict(d['heatmaps'][0], min=min(h['min'] for h in d['heatmaps']), max=max(h['max'] for h in d['heatmaps'])))
               for d in drawn if 'atlas' in d['title']]  # one colour scale shared by the layers of a cell
    axes = [(d['title'], a) for d in drawn for a in d['axes']]
    assert len(heatmaps) == 2 and len(atlases) == 2 and len(axes) == 10, drawn
    heatmaps += atlases
    for title, r in heatmaps + axes:
        spread = r['max'] - r['min']
        assert spread > 0 and r['lo'] <= r['min'] + 1e-9 and r['hi'] >= r['max'] - 1e-9, (title, r)
        assert r['hi'] - r['lo'] <= ratio * spread, (title, r)  # not a fixed 0-1 scale over data that spans 0.01
    return drawn


def test_report_renders(tmp_path, browser):
    with MetricsWriter(tmp_path / 'metrics.jsonl') as w: write_demo_run(w, epochs=2, steps_per_epoch=50)
    open_report(browser, write_report(tmp_path), N_PLOTS, tmp_path / 'report.png')


@pytest.mark.slow
def test_cli_report_of_real_search(tmp_path, browser, digits):
    run = tmp_path / 'search'
    search(out=run, epochs=1, batch_size=128, dataset='digits', backbone='resnet_mini', device='cpu', log_every=1,
           knn_k=20, progress=False, data=digits)
    (run / 'report.html').unlink()  # the run wrote one; the command must write it again
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout): assert nasiam_main(['report', str(run)]) == 0
    report = Path(stdout.getvalue().strip())
    assert report == run / 'report.html' and report.is_file()
    plots = open_report(browser, report, N_PLOTS, tmp_path / 'cli_report.png')
    records = read_metrics(run / 'metrics.jsonl')
    steps = [r for r in records if r['kind'] == 'step']
    assert len(plots[0][0]['z']) == 6 and steps[-1]['step'] == len(steps)  # projector heatmap: 6 layers; one record per step
    assert any(r['kind'] == 'epoch' and r.get('val_knn_top1') is not None for r in records)
    page = browser.new_page(viewport=dict(width=1300, height=1000))
    page.goto(report.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {N_PLOTS}", timeout=30_000)
    drawn = check_scales(page)
    heat = [h for d in drawn if 'op weights at step' in d['title'] for h in d['heatmaps']]
    print('op-weight heatmaps: colour range / data spread =', [round((h['hi'] - h['lo']) / (h['max'] - h['min']), 2) for h in heat])
    assert page.locator('p.decision').inner_text().startswith('Search decided ')


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('NASIAM_SCREENSHOTS'), reason='set NASIAM_SCREENSHOTS=DIR to run the quickstart and save screenshots there '
                                                                   '(NASIAM_QUICKSTART_RUN=DIR to use a run already made)')
def test_quickstart_screenshots(tmp_path, browser):
    "After the quickstart (`nasiam run`, default parameters): screenshots of its search's heatmap, margin panel and atlas."
    dest = Path(os.environ['NASIAM_SCREENSHOTS']); dest.mkdir(parents=True, exist_ok=True)
    if os.environ.get('NASIAM_QUICKSTART_RUN'):  # a quickstart run already made: its report is written again from its records
        out = Path(os.environ['NASIAM_QUICKSTART_RUN'])
        write_report(out / 'search')
    else:
        out = tmp_path / 'quickstart'
        assert nasiam_main(['run', str(REPO / 'nbs/experiments/quickstart.ipynb'), '--out', str(out)]) == 0  # prints its progress (pytest -s shows it)
    page = browser.new_page(viewport=dict(width=1000, height=900))
    page.route(lambda url: not url.startswith('file:'), lambda route: route.abort())
    page.goto((out / 'search' / 'report.html').as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {N_PLOTS}", timeout=30_000)
    check_scales(page)
    plots = page.locator('.js-plotly-plot')
    for i, name in ((0, 'heatmap'), (1, 'margins'), (3, 'atlas')):  # the projector's figures
        plots.nth(i).screenshot(path=dest / f'quickstart_{name}.png')
        assert (dest / f'quickstart_{name}.png').stat().st_size < 300_000
    page.locator('p.decision').screenshot(path=dest / 'quickstart_decision.png')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    "A JupyterLab server on 127.0.0.1 serving tmp_path/'lab'; yields (base url, token)."
    (tmp_path / 'lab').mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / '.lab-settings'),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / '.lab-workspaces'))
    jupyter = Path(sys.executable).parent / 'jupyter'
    server = subprocess.Popen([str(jupyter), 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                               f'--ServerApp.token={token}', '--allow-root', f"--ServerApp.root_dir={tmp_path / 'lab'}",
                               '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                              env=env, cwd=tmp_path / 'lab', stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'lab.log', 'w'))
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=1); break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f'JupyterLab did not start; see {tmp_path / "lab.log"}')
        yield url, token
    finally:
        server.terminate()
        try: server.wait(10)
        except subprocess.TimeoutExpired: server.kill()


HEATMAP_Z_JS = """() => {
    const plots = Array.from(document.querySelectorAll('.jp-OutputArea .js-plotly-plot'));
    const heat = plots.find(el => el.data && el.data.length && el.data[0].type === 'heatmap');
    return heat ? JSON.stringify(heat.data[0].z) : null; }"""


# Points per trace as the widget holds them: an array, a typed array, or a still-encoded numpy array ({dtype, bdata, shape}).
TRACE_LENGTHS_JS = """() => Array.from(document.querySelectorAll('.jp-OutputArea .js-plotly-plot')).map(
    el => (el.data || []).map(t => { const v = t.z || t.y;
        if (v == null) return 0;
        if (v.length !== undefined) return v.length;
        if (v.shape !== undefined) return Number(String(v.shape).split(',')[0]);
        return v.bdata ? Math.floor(atob(v.bdata).length / (Number(String(v.dtype).replace(/[^0-9]/g, '')) || 8)) : 0; }))"""


@pytest.mark.slow
def test_live_dashboard_in_jupyterlab(tmp_path, browser, jupyter_lab):
    url, token = jupyter_lab
    (tmp_path / 'lab' / 'live.ipynb').write_text(json.dumps(live_notebook()))
    page = browser.new_page(viewport=dict(width=1400, height=1100))
    page.route(lambda u: not u.startswith('http://127.0.0.1'), lambda route: route.abort())
    page.goto(f'{url}/lab/tree/live.ipynb?token={token}')
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=60_000)
    try: page.locator('.jp-Dialog button', has_text='Select').click(timeout=10_000)  # kernel choice, if asked
    except PlaywrightTimeout: pass
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
    try: page.wait_for_function(f"({HEATMAP_Z_JS})() !== null", timeout=180_000)  # the search's first steps are slow on a loaded 2-core machine
    finally: page.screenshot(path=tmp_path / 'live_waiting.png')
    z1 = page.evaluate(HEATMAP_Z_JS)
    page.wait_for_function(f"({HEATMAP_Z_JS})() !== {json.dumps(z1)}", timeout=120_000)  # the next alpha records arrive
    z2 = page.evaluate(HEATMAP_Z_JS)
    running = page.locator('.jp-OutputArea-output', has_text='run finished').count() == 0
    assert z1 != z2 and running, 'the heatmap did not change while the search was running'
    plots = page.evaluate(TRACE_LENGTHS_JS)
    assert len(plots) == N_PLOTS and all(n > 0 for p in plots for n in p), plots
    assert all(plots[:N_PLOTS - 1]), plots  # only the accuracy figure waits for the first epoch
    page.screenshot(path=tmp_path / 'live.png')  # the architecture figures come first
    page.locator('.jp-OutputArea-output', has_text='run finished').wait_for(timeout=240_000)
    plots = page.evaluate(TRACE_LENGTHS_JS)
    assert len(plots) == N_PLOTS and all(plots) and all(n > 0 for p in plots for n in p), plots
    page.screenshot(path=tmp_path / 'live_end.png', full_page=True)
    records = read_metrics(tmp_path / 'lab' / 'runs' / 'live' / 'metrics.jsonl')
    assert [r['event'] for r in records if r['kind'] == 'event'] == ['start', 'end']
