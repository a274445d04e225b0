import os
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data(name: str) -> Path | None:
    "A dataset under ../shared/data (or $NASIAM_SHARED_DATA), or None when it is not there."
    roots = [Path(os.environ['NASIAM_SHARED_DATA'])] if os.environ.get('NASIAM_SHARED_DATA') else []
    roots.append(REPO.parent / 'shared' / 'data')
    for root in roots:
        if (root / name).is_dir(): return root / name
        if root.name == name and root.is_dir(): return root
    return None


@pytest.fixture(scope='session')
def digits():
    from nasiam.data import load_dataset
    return load_dataset('digits')


def cli(*args):
    "Run `nasiam ARGS...` in this process; returns (exit code, stdout, stderr)."
    import contextlib, io
    from nasiam.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()
