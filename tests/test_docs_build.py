"""docs/build.py, the builder `make docs` uses without Quarto, on its own (no browser, no full build): an API entry from
the docments, and a notebook through nbdev's doc processors without running its cells."""
import importlib.util, json
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('docs_build', REPO / 'docs' / 'build.py')
build = importlib.util.module_from_spec(spec); spec.loader.exec_module(build)


def test_an_api_entry_has_the_signature_docstring_and_docments_table():
    from nasiam.trackers import tracker_hooks, genotype_lines
    md = build.api_entry(tracker_hooks)
    assert '<h3 id="tracker_hooks"' in md and 'tracker_hooks(' in md  # the anchor the API links point at, the signature
    assert '*before anything is written' not in md and 'before anything is written' in md  # the docstring, as text
    assert '| <code>out</code> | str &#124; pathlib.Path |  | the run directory |' in md  # a row; its | escaped
    assert '| <code>wandb</code> | bool | <code>False</code> | a W&amp;B run |' in md or '| <code>wandb</code> | bool | <code>False</code> | a W&B run |' in md
    assert '|---|---|---|---|' not in build.api_entry(genotype_lines)  # no docments: no table
    assert 'blob/main/nasiam/trackers.py#L' in md  # the source link has the line


def test_a_notebook_is_processed_without_running_it(monkeypatch):
    monkeypatch.chdir(REPO)
    fm, cells = build.process(REPO / 'nbs' / '07h_trackers.ipynb')
    assert fm['title'] == 'Experiment trackers' and fm['output-file'] == 'trackers.html'
    md = '\n'.join(c['source'] for c in cells if c['cell_type'] == 'markdown')
    assert 'id="tracker_hooks"' in md and 'the run directory' in md
    code = [c for c in cells if c['cell_type'] == 'code']
    assert code and not any('#| export' in c['source'] or 'default_exp' in c['source'] for c in code)  # hidden as nbdev hides them
    assert all(c['outputs'] == [] for c in code)  # nothing ran
    fm, cells = build.process(REPO / 'nbs' / 'index.ipynb')
    texts = [c['source'] for c in cells]
    first, what = (next(i for i, t in enumerate(texts) if s in t) for s in ('make demo', '## What it does'))
    assert fm['title'] == 'nasiam' and first < what  # the title cell's other lines stay, in their place


def test_a_show_doc_of_a_name_the_module_lacks_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    nb = {'nbformat': 4, 'nbformat_minor': 5, 'metadata': {}, 'cells': [
        {'cell_type': 'code', 'id': 'a', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': '#| default_exp trackers'},
        {'cell_type': 'markdown', 'id': 'b', 'metadata': {}, 'source': '# A page\n\n> Its description.'},
        {'cell_type': 'code', 'id': 'c', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': 'show_doc(no_such_name)'}]}
    (tmp_path / '01_page.ipynb').write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match=r'01_page.ipynb: `show_doc\(no_such_name\)` could not be rendered'):
        build.process(tmp_path / '01_page.ipynb')


def test_headings_get_the_ids_links_to_them_use():
    "A README or notebook link to `page.ipynb#is-the-searchs-answer-real` lands: GitHub's and Quarto's ids, a repeat numbered."
    h = lambda t, i: f'<h2 id="{i}">{t}<a class="anchor-link" href="#{i}">¶</a></h2>'
    body = h("Is the search's answer real?", "Is-the-search's-answer-real?") + h('Weights &amp; Biases', 'Weights-&amp;-Biases') + h('RunData', 'RunData') * 2
    out = build.heading_ids(body + '<h3 id="rundata.views" class="doc-name"><a href="#rundata.views">RunData.views</a></h3>')
    assert h("Is the search's answer real?", 'is-the-searchs-answer-real') in out
    assert h('Weights &amp; Biases', 'weights--biases') in out
    assert h('RunData', 'rundata') + h('RunData', 'rundata-1') in out
    assert '<h3 id="rundata.views" class="doc-name">' in out  # an API entry keeps the anchor its links point at
