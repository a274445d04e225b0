"""Builds the documentation site in _docs/ without Quarto, offline: every notebook of nbs/ a page, named as nbdev names
it (07h_trackers.ipynb -> trackers.html, index.ipynb -> index.html), with a sidebar linking every page.

The notebooks go through nbdev's own doc processors (front matter, `#| hide`, exported cells hidden, a `show_doc` after
every export, links to the API), except the one that executes notebooks: the API entries are rendered from the
exported modules (`nasiam.<default_exp>`), so no cell of a notebook runs. An entry is the name, the signature, the
docstring and a table of the docments. The pages are made with nbconvert's basic template and carry their style
inline: no script, no font, nothing from the network.

`make docs` runs this when `quarto` is not on PATH (with Quarto it runs nbdev_docs). Usage: python docs/build.py
"""
import ast, html, importlib, inspect, os, re, shutil, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's nasiam, not an installed one

from execnb.nbio import read_nb, mk_cell
from fastcore.docments import docments, qual_name
from nbconvert import HTMLExporter
from traitlets.config import Config
from nbdev.config import get_config
from nbdev.process import NBProcessor, Processor
from nbdev.processors import FilterDefaults, exec_show_docs
from nbformat import from_dict
from pygments.formatters import HtmlFormatter

CFG = get_config(path=REPO)
OUT = CFG.doc_path  # _docs/, as nbdev_docs writes it
SITE_URL = f"{CFG.doc_host.rstrip('/')}{CFG.doc_baseurl.rstrip('/')}/"  # add_links points API names here


# --- API entries, from the modules ---------------------------------------------------------------------------------
def _cell(s) -> str:
    "Text for a markdown table cell."
    return html.escape(str(s)).replace('|', '&#124;').replace('\n', ' ')

def _anno(a) -> str:
    return '' if a is inspect.Parameter.empty else inspect.formatannotation(a).strip("'")

def _param(p: inspect.Parameter) -> str:
    "A parameter as the signature shows it: `name:type=default`, `*args`, `**kwargs`."
    star = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '')
    anno = '' if p.annotation is p.empty else f":{_anno(p.annotation).replace(' ', '')}"
    default = '' if p.default is p.empty else f"={getattr(p.default, '__name__', None) if inspect.isfunction(p.default) else repr(p.default)}"
    return f"{star}{p.name}{anno}{default}"

def _unwrap(sym):
    "What a decorated function or a property documents: the wrapped function, the getter."
    if not hasattr(sym, '__signature__'): sym = getattr(sym, '__wrapped__', sym)
    return getattr(sym, 'fget', None) or sym

def _show_doc_calls(tree) -> list:
    "The `show_doc(...)` expressions of a cell."
    return [t for t in tree if isinstance(t, ast.Expr) and isinstance(t.value, ast.Call)
            and getattr(t.value.func, 'id', None) == 'show_doc']

def _source_url(sym) -> str | None:
    try:
        f, line = inspect.getsourcefile(sym), inspect.getsourcelines(sym)[1]
        rel = Path(f).resolve().relative_to(REPO)
    except (TypeError, OSError, ValueError): return None
    return f"{CFG.git_url.rstrip('/')}/blob/{CFG.branch}/{rel.as_posix()}#L{line}"

def _signature(sym, nm: str) -> str | None:
    try: sig = inspect.signature(sym, eval_str=True)
    except (ValueError, TypeError, NameError): return None
    ps = [p for i, p in enumerate(sig.parameters.values()) if not (i == 0 and p.name in ('self', 'cls'))]
    ret = sig.return_annotation
    ret = '' if ret is inspect.Signature.empty or (inspect.isclass(sym) and ret in (None, 'None')) else f" -> {_anno(ret)}"
    one = f"{nm}({', '.join(_param(p) for p in ps)}){ret}"
    if len(one) <= 100: return one
    return f"{nm}(\n" + ''.join(f"    {_param(p)},\n" for p in ps) + f"){ret}"

def _docments_table(sym) -> str:
    "The docments as a table (parameter, type, default, details), or '' when no parameter has one."
    try: dm = docments(sym, full=True, eval_str=True)
    except (TypeError, OSError, ValueError, SyntaxError): return ''  # no Python source (a builtin, a C extension)
    if not any(v.get('docment') for v in dm.values()): return ''
    rows = ['| | **Type** | **Default** | **Details** |', '|---|---|---|---|']
    for k, v in dm.items():
        if k in ('self', 'cls'): continue
        d = v.get('default', inspect.Parameter.empty)
        default = '' if d is inspect.Parameter.empty else f"<code>{_cell(repr(d))}</code>"
        name = '**Returns**' if k == 'return' else f"<code>{_cell(k)}</code>"
        if k == 'return' and not v.get('docment') and (inspect.isclass(sym) or v.get('anno', inspect.Parameter.empty)
                                                       in (inspect.Parameter.empty, None, 'None')): continue
        rows.append(f"| {name} | {_cell(_anno(v.get('anno', inspect.Parameter.empty)))} | {default} | {_cell(v.get('docment') or '')} |")
    return '\n'.join(rows)

def api_entry(sym, renderer=None, name: str | None = None, title_level: int = 3) -> str:
    "Markdown for one API entry, in place of nbdev's `show_doc` (same arguments): name, signature, docstring, docments."
    sym = _unwrap(sym)
    nm = name or qual_name(sym)
    h, anchor = f"h{title_level}", html.escape(nm.lower(), quote=True)
    md = [f'<{h} id="{anchor}" class="doc-name"><a href="#{anchor}">{html.escape(nm)}</a></{h}>']
    src = _source_url(sym)
    if src: md[0] = f'<a class="doc-source" href="{html.escape(src, quote=True)}">source</a>\n' + md[0]
    sig = _signature(sym, nm)
    if sig: md.append(f"```python\n{sig}\n```")
    doc = inspect.getdoc(sym) if callable(sym) else None  # a plain value's docstring would be its type's
    if doc: md.append(doc)
    tbl = _docments_table(sym)
    if tbl: md.append(tbl)
    return '<div class="doc-entry">\n\n' + '\n\n'.join(md) + '\n\n</div>'


class show_docs_from_module(Processor):
    "In place of nbdev's `exec_show_docs`: each `show_doc(...)` cell's output, evaluated against the exported module."
    def begin(self):
        self.ns = {'show_doc': api_entry}
        exp = next((m.group(1) for c in self.nb.cells if c.cell_type == 'code'
                    for m in [re.search(r'^#\|\s*default_exp\s+(\S+)', c.source, re.M)] if m), None)
        if exp: self.ns.update(vars(importlib.import_module(f"{CFG.lib_name}.{exp}" if exp != '__init__' else CFG.lib_name)))

    def __call__(self, cell):
        if cell.cell_type != 'code' or not cell.get('source'): return
        calls = _show_doc_calls(cell.parsed_())
        if not calls: return
        outs = []
        for t in calls:
            try: md = eval(compile(ast.Expression(t.value), '<show_doc>', 'eval'), self.ns)
            except Exception as e:
                raise RuntimeError(f"{self.nb.path_}: `{ast.unparse(t)}` could not be rendered from the module "
                                   f"({type(e).__name__}: {e}); the docs show only what the notebook exports") from e
            outs.append(dict(output_type='display_data', metadata={}, data={'text/markdown': md}))
        cell.outputs = outs


# --- pages -----------------------------------------------------------------------------------------------------------
def _directives(src: str) -> tuple[dict, str]:
    "Quarto cell options (`#| echo: false`) and the source without them."
    opts, lines = {}, src.splitlines()
    while lines and lines[0].startswith('#|'):
        k, _, v = lines.pop(0)[2:].strip().partition(':')
        opts[k.strip()] = v.strip()
    return opts, '\n'.join(lines)

def split_title_cell(nb):
    "nbdev takes the title and description from the first markdown cell and drops the cell: keep what else it holds."
    md = next((c for c in nb.cells if c.cell_type == 'markdown'), None)
    if md is None or not re.match(r'#\s+\S', md.source): return
    lines = md.source.splitlines()
    head = 1 + next((i for i, l in enumerate(lines[1:]) if l.strip() and not l.startswith('>')), len(lines) - 1)
    rest = '\n'.join(lines[head:]).strip()
    if not rest: return
    md.source = '\n'.join(lines[:head]).strip()
    nb.cells.insert(nb.cells.index(md) + 1, mk_cell(rest, 'markdown'))

def process(path: Path):
    "A notebook through nbdev's doc processors: (front matter, cells to show as nbformat cells)."
    nb = read_nb(path)
    nb.path_ = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    split_title_cell(nb)
    procs = [show_docs_from_module if p is exec_show_docs else p for p in FilterDefaults().procs()]
    NBProcessor(nb=nb, procs=procs).process()
    cells = []
    for c in nb.cells:
        src = c.get('source')
        if src is None or c.cell_type == 'raw': continue  # removed by a processor (hide, export), or the front matter
        if c.cell_type == 'markdown':
            cells.append(dict(cell_type='markdown', metadata={}, source=src)); continue
        opts, code = _directives(src)
        if opts.get('include') == 'false': continue
        outs = [] if opts.get('output') == 'false' else list(c.get('outputs', []))
        if opts.get('output') == 'asis':  # show_doc: its markdown becomes the page's own text
            cells.extend(dict(cell_type='markdown', metadata={}, source=o['data']['text/markdown']) for o in outs
                         if 'text/markdown' in o.get('data', {}))
            outs = [o for o in outs if 'text/markdown' not in o.get('data', {})]
        if opts.get('echo') == 'false':
            if outs: cells.append(dict(cell_type='code', metadata={'tags': ['remove_input']}, source='',
                                       outputs=outs, execution_count=None))
            continue
        if code.strip() or outs:
            cells.append(dict(cell_type='code', metadata={}, source=code, outputs=outs, execution_count=None))
    return nb.frontmatter_, cells

CSS = """
*{box-sizing:border-box} body{margin:0;font:16px/1.55 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;display:flex}
nav#sidebar{position:sticky;top:0;height:100vh;overflow:auto;width:17rem;flex:none;padding:1rem;background:#f6f7f9;border-right:1px solid #e2e4e8;font-size:.9rem}
nav#sidebar .site-title{display:block;font-weight:700;font-size:1.2rem;margin-bottom:.8rem;color:#222;text-decoration:none}
nav#sidebar ul{list-style:none;margin:0;padding:0} nav#sidebar li a{display:block;padding:.2rem .4rem;border-radius:4px;color:#333;text-decoration:none}
nav#sidebar li a:hover{background:#e8eaee} nav#sidebar li a.active{background:#dde6f5;font-weight:600}
main{flex:1;min-width:0;max-width:60rem;padding:1.5rem 2.5rem 4rem} main h1.title{margin-bottom:.3rem}
main p.description{font-size:1.1rem;color:#555;margin-top:0} a{color:#1a5fb4}
pre,code{font:0.9em/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace} code{background:#f2f3f5;padding:.05em .25em;border-radius:3px}
pre{background:#f7f8fa;padding:.7rem .9rem;overflow:auto;border-radius:5px;border:1px solid #eceef1} pre code{background:none;padding:0}
table{border-collapse:collapse;margin:.8rem 0;font-size:.92rem;display:block;overflow:auto} th,td{border:1px solid #dfe2e6;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f2f4f7} img{max-width:100%} blockquote{margin:0;padding:0 1rem;color:#555;border-left:3px solid #dfe2e6}
.doc-entry{border-top:1px solid #e2e4e8;margin-top:1.6rem;padding-top:.3rem} .doc-entry h3,.doc-entry h4{margin:.4rem 0}
.doc-entry h3 a,.doc-entry h4 a{color:inherit;text-decoration:none;font-family:ui-monospace,Menlo,Consolas,monospace}
.doc-source{float:right;font-size:.8rem} .output_area pre{background:#fff}
.jp-InputPrompt,.prompt{display:none} a.anchor-link{visibility:hidden;margin-left:.3rem;text-decoration:none;font-size:.8em}
h1:hover a.anchor-link,h2:hover a.anchor-link,h3:hover a.anchor-link,h4:hover a.anchor-link{visibility:visible}
"""

def _inline(s: str) -> str:
    "A title or description as HTML: escaped, `code` as code."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(s))

def page(title: str, description: str, body: str, nav: list[tuple[str, str]], current: str) -> str:
    links = '\n'.join(f'<li><a href="{f}"{" class=active" if f == current else ""}>{_inline(t)}</a></li>' for f, t in nav)
    head_title = CFG.title if current == 'index.html' else f"{title.replace('`', '')} – {CFG.title}"
    desc = f'<p class="description">{_inline(description)}</p>' if description else ''
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(head_title)}</title>
<style>{CSS}{HtmlFormatter(style='default').get_style_defs('.highlight')}</style></head>
<body><nav id="sidebar"><a class="site-title" href="index.html">{html.escape(CFG.title)}</a><ul>
{links}
</ul></nav>
<main id="content"><header><h1 class="title">{_inline(title)}</h1>{desc}</header>
{body}
</main></body></html>
"""

_re_attr = re.compile(r'(\b(?:src|href)=")([^"]*)(")')

def localise(body: str, src_nb: Path, pages: dict[str, str], out: Path) -> str:
    "Links to the site and to notebooks point at the pages; images in the repository are copied beside the pages."
    def fix(m):
        url = html.unescape(m.group(2))
        if url.startswith(SITE_URL): url = url[len(SITE_URL):]
        elif re.match(r'^[a-z][a-z0-9+.-]*:|^#|^$', url): return m.group(0)
        path, _, frag = url.partition('#')
        if path.endswith('.ipynb'):
            stem = Path(path).stem
            if stem in pages: path = pages[stem]
        elif m.group(1).startswith('src') or re.search(r'\.(png|jpe?g|gif|svg|webp)$', path, re.I):
            f = next((p for p in (src_nb.parent / path, REPO / path) if p.is_file()), None)
            if f is None: raise FileNotFoundError(f"{src_nb.relative_to(REPO)} shows {path}, which is not in the repository")
            rel = f.resolve().relative_to(REPO)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out / rel)
            path = rel.as_posix()
        return m.group(1) + html.escape(path + ('#' + frag if frag else ''), quote=True) + m.group(3)
    return _re_attr.sub(fix, body)

_re_heading = re.compile(r'<h([1-6]) id="([^"]+)">(.*?)</h\1>', re.S)

def heading_ids(body: str) -> str:
    "Headings get the ids GitHub and Quarto give them (lower case, punctuation dropped, `-1` on a repeat), so that a link to `page.ipynb#a-heading` lands."
    seen = {}
    def fix(m):
        level, old, inner = m.groups()
        slug = re.sub(r'[^\w\- ]', '', html.unescape(old).lower()).replace(' ', '-')
        n = seen.get(slug, 0); seen[slug] = n + 1
        if n: slug = f'{slug}-{n}'
        return f'<h{level} id="{slug}">' + inner.replace(f'href="#{old}"', f'href="#{slug}"') + f'</h{level}>'
    return _re_heading.sub(fix, body)

def main():
    os.chdir(REPO)  # nbdev's processors read settings.ini from the working directory
    nbs = sorted(CFG.nbs_path.glob('*.ipynb'))
    nbs.sort(key=lambda p: p.stem != 'index')  # the index first, then the notebooks in their order
    done = [(p, *process(p)) for p in nbs]
    pages = {p.stem: fm.get('output-file') or ('index.html' if p.stem == 'index' else p.stem.split('_', 1)[-1] + '.html')
             for p, fm, _ in done}
    nav = [(pages[p.stem], fm.get('title') or p.stem) for p, fm, _ in done]
    if OUT.exists(): shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    exporter = HTMLExporter(template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True,
                            config=Config(TagRemovePreprocessor=dict(enabled=True, remove_input_tags={'remove_input'})))
    for p, fm, cells in done:
        cells = [dict(c, id=f"c{i}") for i, c in enumerate(cells)]
        nb = from_dict(dict(nbformat=4, nbformat_minor=5, metadata={'language_info': {'name': 'python'}}, cells=cells))
        body, _ = exporter.from_notebook_node(nb)
        body = localise(heading_ids(body), p, pages, OUT)
        (OUT / pages[p.stem]).write_text(page(fm.get('title') or p.stem, fm.get('description', ''), body, nav, pages[p.stem]))
    print(f"docs/build.py built {OUT.relative_to(REPO)}/ without Quarto (nbdev's doc processors and nbconvert): "
          f"{len(done)} pages from {CFG.nbs_path.relative_to(REPO)}/")

if __name__ == '__main__': main()
