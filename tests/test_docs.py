"""`make docs` builds the nbdev site with Quarto offline, and the site opens in headless Chromium: the index page, and
an API page whose entries come from the docments. Needs Quarto (the quarto-cli package of the [docs] extra, or quarto
on PATH), Chromium and playwright; skipped, saying which is missing, without them."""
import shutil, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests: its nbdev, and its quarto when quarto-cli is installed
QUARTO = shutil.which('quarto', path=f"{VENV / 'bin'}:{__import__('os').environ.get('PATH', '')}")
CHROMIUM = shutil.which('chromium')
try: from playwright.sync_api import sync_playwright
except ImportError: sync_playwright = None
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(QUARTO is None, reason="Quarto not installed (pip install -e '.[docs]', the quarto-cli package, or quarto on PATH)"),
              pytest.mark.skipif(CHROMIUM is None, reason='chromium not on PATH (apt-get install chromium)'),
              pytest.mark.skipif(sync_playwright is None, reason='python package playwright not installed')]


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "The site built by `make docs` in a copy of the repository (the build writes nbs/*.yml and _docs/)."
    copy = tmp_path_factory.mktemp('docs') / 'repo'
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns('.git', '.venv', 'runs', '_docs', '_proc', '__pycache__', 'data', '*.pt'))
    readme = (copy / 'README.md').read_text()
    p = subprocess.run(['make', '-o', str(VENV / '.installed'), 'docs', f'VENV={VENV}'], cwd=copy, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (copy / 'README.md').read_text() == readme  # the README stays the project's own
    return copy / '_docs'


def test_every_notebook_is_a_page_and_the_site_opens_offline(site):
    pages = {p.stem for p in site.rglob('*.html')}
    for nb in (REPO / 'nbs').glob('*.ipynb'):
        if nb.stem == 'index': continue
        name = nb.stem.split('_', 1)[1]  # nbdev names a page after its notebook, without the number
        assert name in pages or nb.stem in pages, (nb.name, sorted(pages))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=['--headless', '--no-sandbox', '--disable-gpu'])
        page = browser.new_page()
        page.route(lambda url: not url.startswith('file:'), lambda route: route.abort())  # the site needs no network
        page.goto((site / 'index.html').as_uri())
        assert 'nasiam' in page.title().lower()
        assert page.locator('#quarto-sidebar a, nav a').count() >= 10  # the pages are linked from the index
        api = next(p for p in site.rglob('*.html') if p.stem in ('trackers', '07h_trackers'))
        page.goto(api.as_uri())
        text = page.inner_text('main')
        assert 'tracker_hooks' in text and 'the run directory' in text  # a function's entry and its docments
        assert page.locator('main table').count() >= 1  # show_doc's parameter tables
        browser.close()
