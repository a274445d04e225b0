"""Real-browser checks of the dashboard: the static report, and live figures in JupyterLab.

Needs Chromium (Debian package `chromium`) and the Python `playwright` package; no downloaded browsers.
"""
import contextlib, dataclasses, io, json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
import torch

from nasiam.cli import main as nasiam_main
from nasiam.dashboard import write_report
from nasiam.evaluate import feature_map, feature_map_record
from nasiam.records import MetricsWriter, read_metrics, write_demo_run
from nasiam.train import pretrain, search

REPO = Path(__file__).resolve().parents[1]
from conftest import CHROMIUM, CHROMIUM_ARGS as ARGS, NEEDS_BROWSER, PlaywrightTimeout, sync_playwright
pytestmark = NEEDS_BROWSER

# The notebook run live in JupyterLab: a live Dashboard drawn while a short real CPU search writes its records.
LIVE_NOTEBOOK_CELLS = [
    "from nasiam.train import search\n"
    "from nasiam.dashboard import Dashboard",
    "dash = Dashboard(live=True, every_steps=1, every_seconds=1.0, busy=None).show()  # busy=None: every due refresh (what reaches the page is tested, not the pacing)\n"
    "res = search(out='runs/live', epochs=1, batch_size=64, dataset='digits', backbone='resnet_mini', device='cpu',\n"
    "             log_every=1, knn_k=20, force=True, callbacks=[dash], progress=False)\n"
    "print('run finished', res['genotype'])",
]


def notebook(sources: list[str]) -> dict:
    "A notebook (nbformat 4 JSON) of these code cells."
    cells = [dict(cell_type='code', metadata={}, source=src, outputs=[], execution_count=None, id=f'c{i}')
             for i, src in enumerate(sources)]
    return dict(cells=cells, metadata=dict(kernelspec=dict(name='python3', display_name='Python 3 (ipykernel)', language='python')),
                nbformat=4, nbformat_minor=5)


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


N_PLOTS = 11  # 2 cells x (heatmap, margins, trajectories, atlas), loss, collapse, accuracy (a search: no feature map)

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


# Per feature map drawn: its title, its subplots' titles, its traces, and the markers drawn in the page's SVG.
FEATURE_MAP_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(el => ((el._fullLayout.title && el._fullLayout.title.text) || '').startsWith('feature map'))
    .map(el => ({title: el._fullLayout.title.text, subplots: (el._fullLayout.annotations || []).map(a => a.text),
                 traces: el._fullData.map(t => ({type: t.type, mode: t.mode, name: t.name, n: t.x.length, legend: t.showlegend})),
                 markers: el.querySelectorAll('.scatterlayer .point').length}))"""


def test_report_renders(tmp_path, browser):
    "The demo search's figures, and a feature map of 3 classes: its two maps drawn with every point, a legend entry per class."
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(30)
    fmap = feature_map(torch.randn(3, 16, generator=g)[labels] * 3 + torch.randn(90, 16, generator=g), labels, max_points=60)
    with MetricsWriter(tmp_path / 'metrics.jsonl') as w:
        write_demo_run(w, epochs=2, steps_per_epoch=50)
        w.log('feature_map', step=100, epoch=2, **feature_map_record(fmap, ['cat', 'dog', 'owl'], images=90))
    report = write_report(tmp_path)
    open_report(browser, report, N_PLOTS + 1, tmp_path / 'report.png')
    page = browser.new_page(viewport=dict(width=1300, height=1000))
    page.goto(report.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {N_PLOTS + 1}", timeout=30_000)
    [drawn] = page.evaluate(FEATURE_MAP_JS)
    assert drawn['title'].startswith('feature map: 60 of 90 held-out images (val), by label'), drawn
    assert drawn['subplots'][0].startswith('PCA (') and drawn['subplots'][1] == 't-SNE (perplexity 19.7)', drawn
    assert [(t['type'], t['mode'], t['name'], t['legend']) for t in drawn['traces']] == \
        [('scatter', 'markers', name, first) for first in (True, False) for name in ('cat', 'dog', 'owl')], drawn
    assert [t['n'] for t in drawn['traces']] == [20] * 6 and drawn['markers'] == 120, drawn  # every point of both maps is on the page


def test_report_of_a_real_pretraining_draws_its_feature_map(tmp_path, browser, digits):
    "A short digits pretraining: its report's last figure is the map of its 40 held-out images, both maps drawn with every point."
    small = dataclasses.replace(digits, train_images=digits.train_images[:400], train_labels=digits.train_labels[:400])
    pretrain(out=tmp_path / 'pre', epochs=1, batch_size=128, dataset='digits', backbone='resnet_mini', device='cpu', precision='fp32',
             knn_k=20, progress=False, data=small)
    page = browser.new_page(viewport=dict(width=1300, height=1000))
    page.route(lambda url: not url.startswith('file:'), lambda route: route.abort())
    page.goto((tmp_path / 'pre' / 'report.html').as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4", timeout=30_000)  # loss, collapse, accuracy, map
    [drawn] = page.evaluate(FEATURE_MAP_JS)
    page.screenshot(path=tmp_path / 'pretrain_report.png', full_page=True)
    assert drawn['title'].startswith('feature map: 40 held-out images (val), by label')  # all of them: under the cap, drawn
    assert [t['name'] for t in drawn['traces']] == [str(k) for k in range(10)] * 2, drawn  # a legend entry per digit
    assert sum(t['n'] for t in drawn['traces']) == 80 and drawn['markers'] == 80, drawn


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


@pytest.fixture(scope='module')
def jupyter_lab(tmp_path_factory):
    "One JupyterLab server on 127.0.0.1 for the module's checks, serving a folder; yields (base url, token, that folder)."
    tmp_path = tmp_path_factory.mktemp('jupyterlab')
    (tmp_path / 'lab').mkdir()
    notification = tmp_path / '.lab-settings' / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps(dict(fetchNews='false', checkForUpdates=False)))  # no "notified about Jupyter news?" toast over the page
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
        yield url, token, tmp_path / 'lab'
    finally:
        server.terminate()
        try: server.wait(10)
        except subprocess.TimeoutExpired: server.kill()


def open_notebook(browser, jupyter_lab, path: str, cells: list[str]):
    "Write a notebook of `cells` at `path` under the lab's folder, open it in a new page, wait for its kernel; returns the page."
    url, token, lab = jupyter_lab
    (lab / path).parent.mkdir(parents=True, exist_ok=True)
    (lab / path).write_text(json.dumps(notebook(cells)))
    page = browser.new_page(viewport=dict(width=1400, height=1100))
    page.route(lambda u: not u.startswith('http://127.0.0.1'), lambda route: route.abort())
    page.on('console', lambda m: m.type == 'error' and print('browser console:', m.text[:300]))
    page.goto(f'{url}/lab/workspaces/{Path(path).stem}/tree/{path}?reset&token={token}')  # a workspace of its own: only this notebook open
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=60_000)
    try: page.locator('.jp-Dialog button', has_text='Select').click(timeout=10_000)  # kernel choice, if asked
    except PlaywrightTimeout: pass
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    return page


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
    lab = jupyter_lab[2]
    page = open_notebook(browser, jupyter_lab, 'live.ipynb', LIVE_NOTEBOOK_CELLS)
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
    try: page.wait_for_function(f"({HEATMAP_Z_JS})() !== null", timeout=180_000)  # the search's first steps are slow on a loaded 2-core machine
    finally: page.screenshot(path=tmp_path / 'live_waiting.png')
    z1 = page.evaluate(HEATMAP_Z_JS)
    page.wait_for_function(f"({HEATMAP_Z_JS})() !== {json.dumps(z1)}", timeout=120_000)  # the next alpha records arrive
    z2 = page.evaluate(HEATMAP_Z_JS)
    running = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]', has_text='run finished').count() == 0
    assert z1 != z2 and running, 'the heatmap did not change while the search was running'
    try:  # on a loaded machine the figures after the first are drawn some seconds later
        page.wait_for_function(f"(() => {{ const p = ({TRACE_LENGTHS_JS})(); return p.length === {N_PLOTS} && p.slice(0, {N_PLOTS - 1}).every(t => t.length); }})()",
                               timeout=90_000)
    except PlaywrightTimeout: pass  # the asserts below say what was missing
    plots = page.evaluate(TRACE_LENGTHS_JS)
    assert len(plots) == N_PLOTS and all(n > 0 for p in plots for n in p), plots
    assert all(plots[:N_PLOTS - 1]), plots  # only the accuracy figure waits for the first epoch
    page.screenshot(path=tmp_path / 'live.png')  # the architecture figures come first
    page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]', has_text='run finished').wait_for(timeout=240_000)
    plots = page.evaluate(TRACE_LENGTHS_JS)
    assert len(plots) == N_PLOTS and all(plots) and all(n > 0 for p in plots for n in p), plots
    page.screenshot(path=tmp_path / 'live_end.png', full_page=True)
    records = read_metrics(lab / 'runs' / 'live' / 'metrics.jsonl')
    assert [r['event'] for r in records if r['kind'] == 'event'] == ['start', 'end']


# The workbench notebook: a background search with its dashboard, a cell that runs meanwhile, resume and an
# uninterrupted run compared, then two more runs and the run browser. The test runs the cells one by one.
WORKBENCH_CELLS = [
    "import json, shutil, time, torch\n"
    "from nasiam.background import start_search\n"
    "from nasiam.dashboard import Dashboard\n"
    "from nasiam.hooks import Hook\n"
    "from nasiam.runs import RunBrowser\n"
    "from nasiam.train import load_checkpoint, search\n"
    "FAST = dict(dataset='digits', backbone='resnet_mini', batch_size=64, epochs=2, knn_every=0, precision='fp32', device='cpu',\n"
    "            val_fraction=0.5, log_every=1, seed=0, progress=False)\n"
    "class Pace(Hook):\n"
    "    'Waits after each step: a run of a few steps lasts long enough to click in (its numbers are unchanged).'\n"
    "    def after_step(self, run, step): time.sleep(10)",
    "dash = Dashboard(live=True, every_steps=1, every_seconds=1.0, busy=None).show()  # every due refresh: the steps are 10 s apart\n"
    "h = start_search(out='runs/bg', callbacks=[dash], hooks=[Pace()], **FAST)",
    "print('second cell ran while the search was', h.status)",
    "shutil.copytree('runs/bg', 'runs/stopped')  # the stopped run, kept for the run browser\n"
    "h2 = start_search(out='runs/bg', resume=True, **FAST); h2.wait()\n"
    "search(out='runs/whole', **FAST)\n"
    "alphas = lambda out: {k: v for k, v in load_checkpoint(f'{out}/checkpoint.pt')['model'].items() if k.endswith('alphas')}\n"
    "genotype = lambda out: {k: v for k, v in json.load(open(f'{out}/genotype.json')).items() if k in ('projector', 'predictor')}\n"
    "a, b = alphas('runs/whole'), alphas('runs/bg')\n"
    "print('resumed', h2.status, 'alphas equal', bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),\n"
    "      'genotype equal', genotype('runs/whole') == genotype('runs/bg'))",
    "class Boom(Hook):\n"
    "    def after_step(self, run, step):\n"
    "        if run.step == 2: raise RuntimeError('boom at step 2')\n"
    "try: start_search(out='runs/failed', hooks=[Boom()], **FAST).wait()\n"
    "except RuntimeError as e: print('failed as planned:', e)\n"
    "search(out='runs/seed1', **{**FAST, 'seed': 1, 'epochs': 1})\n"
    "RunBrowser('runs')",
]

# Per plotly figure drawn: its title and its traces' names and point counts.
FIGURE_TRACES_JS = """() => Array.from(document.querySelectorAll('.jp-OutputArea .js-plotly-plot')).map(el => ({
    title: (el._fullLayout && el._fullLayout.title && el._fullLayout.title.text) || '',
    traces: (el._fullData || []).map(t => ({name: t.name, n: t.y ? t.y.length : 0}))}))"""


def run_cell(page, i: int):
    "Select cell `i` (command mode) and run it."
    page.locator('.jp-Notebook .jp-Cell').nth(i).locator('.jp-InputPrompt').click()
    page.keyboard.press('Shift+Enter')


def wait_ran(page, i: int, timeout: float=300_000):
    "Wait until cell `i` has run (its prompt shows an execution count, not *)."
    page.wait_for_function(f"""() => {{ const p = document.querySelectorAll('.jp-Notebook .jp-Cell')[{i}].querySelector('.jp-InputPrompt');
        return p && /\\[\\d+\\]/.test(p.textContent); }}""", timeout=timeout)


def shoot(page, locators: list, path: Path, max_height: int=1000):
    "A screenshot of the union of the elements (scrolled into view), at most `max_height` px tall."
    locators[0].scroll_into_view_if_needed()
    boxes = [l.bounding_box() for l in locators]
    x0, y0 = min(b['x'] for b in boxes), min(b['y'] for b in boxes)
    x1, y1 = max(b['x'] + b['width'] for b in boxes), max(b['y'] + b['height'] for b in boxes)
    page.screenshot(path=path, clip=dict(x=x0, y=y0, width=x1 - x0, height=min(y1 - y0, max_height)))


@pytest.mark.slow
def test_workbench_in_jupyterlab(tmp_path, browser, jupyter_lab):
    "A background search in JupyterLab: a cell runs meanwhile, the figures update, Stop ends it with a checkpoint, resuming it matches an uninterrupted run; then the run browser."
    lab, shots = jupyter_lab[2] / 'wb', Path(os.environ.get('NASIAM_SCREENSHOTS') or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = open_notebook(browser, jupyter_lab, 'wb/workbench.ipynb', WORKBENCH_CELLS)
    try: workbench_checks(page, lab, shots)
    except BaseException:
        page.screenshot(path=tmp_path / 'failure.png'); print('workbench page at the failure:', tmp_path / 'failure.png')
        raise


def workbench_checks(page, lab: Path, shots: Path):
    cells = page.locator('.jp-Notebook .jp-Cell')
    run_cell(page, 0); wait_ran(page, 0)
    run_cell(page, 1)
    status = page.locator('.nasiam-status')
    status.wait_for(timeout=180_000)
    wait_ran(page, 1)  # the cell that started the search has finished ...
    run_cell(page, 2); wait_ran(page, 2, 120_000)
    assert 'second cell ran while the search was running' in cells.nth(2).inner_text(), cells.nth(2).inner_text()
    # ... and the dashboard's figures update while the search runs (asserted at the end, after the other checks)
    try:
        page.wait_for_function(f"({HEATMAP_Z_JS})() !== null", timeout=40_000)
        z1 = page.evaluate(HEATMAP_Z_JS)
        page.wait_for_function(f"({HEATMAP_Z_JS})() !== {json.dumps(z1)}", timeout=30_000)
        figures_updated = status.get_attribute('data-state') == 'running'
    except PlaywrightTimeout: figures_updated = False
    assert status.get_attribute('data-state') == 'running', status.inner_text()
    page.locator('.widget-button', has_text='Checkpoint now').click()
    page.locator('.nasiam-note', has_text='checkpoint written').wait_for(timeout=60_000)
    text = status.inner_text()
    assert 'images/s' in text and 'left' in text and 'last event' in text and re.search(r'step \d+/\d+', text), text
    page.locator('.widget-button', has_text='Stop').click()
    page.locator('.nasiam-status[data-state="stopped"]').wait_for(timeout=120_000)
    page.locator('.nasiam-note', has_text='checkpoint.pt written').wait_for(timeout=120_000)  # once the run's thread has ended
    assert page.locator('.widget-button', has_text='Stop').is_disabled()
    shoot(page, [status, page.locator('.widget-button', has_text='Stop'), page.locator('.jp-OutputArea .js-plotly-plot').first],
          shots / 'workbench_dashboard.png')
    end = [r for r in read_metrics(lab / 'runs' / 'bg' / 'metrics.jsonl') if r.get('event') == 'end'][-1]
    assert end['stopped'] and (lab / 'runs' / 'bg' / 'checkpoint.pt').is_file()
    stopped_at = end['steps']
    # resume = uninterrupted, checked in the kernel (printed) and here from the files
    run_cell(page, 3)
    cells.nth(3).locator('.jp-OutputArea-output', has_text='resumed').wait_for(timeout=600_000)
    assert 'resumed done alphas equal True genotype equal True' in cells.nth(3).inner_text()
    import torch
    from nasiam.train import load_checkpoint
    ck = {n: load_checkpoint(lab / 'runs' / n / 'checkpoint.pt') for n in ('whole', 'bg')}
    a, b = ({k: v for k, v in ck[n]['model'].items() if k.endswith('alphas')} for n in ('whole', 'bg'))
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert 0 < stopped_at < ck['bg']['step'] == ck['whole']['step']
    # the run browser: every run with its status, two of them overlaid, two searches compared
    run_cell(page, 4)
    page.locator('table.nasiam-runs').wait_for(timeout=600_000)
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('table.nasiam-runs tr')).slice(1).map(
        tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent))""")
    statuses = {r[0]: r[6] for r in rows}
    assert statuses == dict(bg='done', whole='done', stopped='stopped', failed='failed', seed1='done'), rows
    page.locator('.widget-select-multiple select').select_option(label=['whole', 'seed1'])
    page.locator('.widget-button', has_text='Overlay').click()
    page.wait_for_function(f"({FIGURE_TRACES_JS})().some(f => f.title === 'loss')", timeout=120_000)
    figures = page.evaluate(FIGURE_TRACES_JS)
    at, loss = next((i, f) for i, f in enumerate(figures) if f['title'] == 'loss')
    assert {t['name'] for t in loss['traces'] if t['n'] > 0} == {'whole', 'seed1'}, loss
    margins = [f for f in page.evaluate(FIGURE_TRACES_JS) if f['title'].startswith('projector: margin of the chosen op') and '<br>' not in f['title']]
    assert margins and {t['name'] for t in margins[0]['traces']} == {'whole', 'seed1'}, margins
    browser_box = page.locator('table.nasiam-runs')
    overlay = page.locator('.jp-OutputArea .js-plotly-plot').nth(at)
    shoot(page, [browser_box, page.locator('.widget-select-multiple'), overlay], shots / 'workbench_browser.png', 1400)
    page.locator('.widget-button', has_text='Compare genotypes').click()
    summary = page.locator('.nasiam-diff-summary')
    summary.wait_for(timeout=60_000)
    n = page.locator('table.nasiam-genotype-diff tr').count() - 1
    assert n > 0 and re.search(rf'\d+ of {n} layers differ', summary.inner_text()), summary.inner_text()
    header = page.locator('table.nasiam-genotype-diff tr').first.inner_text()
    assert 'whole op' in header and 'seed1 margin' in header and 'seed1 decided' in header, header
    shoot(page, [summary, page.locator('table.nasiam-genotype-diff')], shots / 'workbench_genotypes.png')
    print('genotype differences:', summary.inner_text())
    for name in ('workbench_dashboard', 'workbench_browser', 'workbench_genotypes'):
        assert (shots / f'{name}.png').stat().st_size < 400_000
    assert figures_updated, "the dashboard's op-weight heatmap was not drawn, or did not change, while the search ran"
