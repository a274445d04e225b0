"""`make docs` builds the site offline, and it opens in headless Chromium: every notebook a page, the index with its
links and images, and an API page whose entries come from the docments. Without Quarto `make docs` builds it with
docs/build.py (nbdev's doc processors and nbconvert), with Quarto on PATH with nbdev_docs; the test checks whichever
ran. Needs Chromium and playwright; skipped, saying which is missing, without them."""
import html, re, shutil, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests: its nbdev and nbconvert, and its quarto when installed
from conftest import NEEDS_BROWSER
pytestmark = [pytest.mark.slow, *NEEDS_BROWSER]


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "The site built by `make docs` in a copy of the repository (the build writes _docs/, and with Quarto nbs/*.yml)."
    copy = tmp_path_factory.mktemp('docs') / 'repo'
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns('.git', '.venv', 'runs', '_docs', '_proc', '__pycache__', 'data', '*.pt'))
    readme = (copy / 'README.md').read_text()
    nbs = {p: p.read_bytes() for p in (copy / 'nbs').rglob('*.ipynb')}
    p = subprocess.run(['make', '-o', str(VENV / '.installed'), 'docs', f'VENV={VENV}'], cwd=copy, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert 'make docs' in p.stdout or 'docs/build.py built' in p.stdout, p.stdout  # it says which builder ran
    assert (copy / 'README.md').read_text() == readme  # the README stays the project's own
    assert {q: q.read_bytes() for q in (copy / 'nbs').rglob('*.ipynb')} == nbs  # the notebooks are left as they were
    return copy / '_docs'


def test_every_link_between_the_pages_lands(site):
    "Each link from a page to a page, or to a heading or an API entry on one, finds its target (README and notebook links included)."
    ids = {p.name: set(map(html.unescape, re.findall(r'\bid="([^"]+)"', p.read_text()))) for p in site.glob('*.html')}
    broken = []
    for p in site.glob('*.html'):
        for href in map(html.unescape, re.findall(r'href="([^"]+)"', p.read_text())):
            path, _, frag = href.partition('#')
            if re.match(r'^[a-z][a-z0-9+.-]*:', href) or not (path or frag).strip() or not (path or p.name).endswith('.html'): continue
            target = path or p.name
            if target not in ids or (frag and frag not in ids[target]): broken.append(f'{p.name} -> {href}')
    assert not broken, broken


def offline_page(browser):
    "A page that may load only files; every other request is refused and listed in `page.refused`."
    page = browser.new_page()
    page.refused = []
    page.route(lambda url: not url.startswith('file:'), lambda route: (page.refused.append(route.request.url), route.abort()))
    return page


def test_every_notebook_is_a_page_and_the_index_opens_offline(site, browser):
    pages = {p.stem for p in site.rglob('*.html')}
    for nb in (REPO / 'nbs').glob('*.ipynb'):
        if nb.stem == 'index': continue
        name = nb.stem.split('_', 1)[1]  # nbdev names a page after its notebook, without the number
        assert name in pages or nb.stem in pages, (nb.name, sorted(pages))
    page = offline_page(browser)
    page.goto((site / 'index.html').as_uri())
    assert 'nasiam' in page.title().lower()
    links = page.locator('#quarto-sidebar a, nav a')
    assert links.count() >= 10  # the pages are linked from the index
    hrefs = {h.split('#')[0] for h in links.evaluate_all('els => els.map(e => e.getAttribute("href"))') if h}
    assert 'trackers.html' in {Path(h).name for h in hrefs}, sorted(hrefs)
    assert 'What it does' in page.inner_text('main')  # the README's sections
    images = page.evaluate('[...document.images].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth > 0])')
    assert images and all(ok for _, ok in images), images  # the figures are in the site, not fetched
    assert page.refused == [], page.refused  # the site needs no network


def test_an_api_page_has_its_entries_and_docments(site, browser):
    page = offline_page(browser)
    api = next(p for p in site.rglob('*.html') if p.stem in ('trackers', '07h_trackers'))
    page.goto(api.as_uri())
    text = page.inner_text('main')
    assert 'tracker_hooks' in text and 'the run directory' in text  # a function's entry and its docments
    assert page.locator('main table').count() >= 1  # the docments' parameter tables
    assert page.locator('main table', has_text='the run directory').count() >= 1
    page.locator('nav a', has_text='Run configuration').first.click()  # the sidebar leads to another API page
    page.wait_for_load_state()
    assert 'RunConfig' in page.inner_text('main')
    assert page.refused == [], page.refused
