"Property-based tests: the genotype parsers and the metrics reader on arbitrary text return a value or raise their documented error."
import json
from hypothesis import given, settings, strategies as st, HealthCheck
from nasiam.genotype import Genotype
from nasiam.records import read_metrics, MetricsFormatError
from nasiam.ops import PRIMITIVES

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ops = st.sampled_from(PRIMITIVES)
layers = st.lists(st.lists(ops, min_size=1, max_size=2), min_size=1, max_size=8)
# text that looks like the original format, so the parser's deeper branches are reached too
original_like = st.builds(lambda enc, pred, junk: f"Genotype(encoder={enc!r}, predictor={pred!r}){junk}",
                          layers, st.lists(st.lists(st.text(max_size=12), max_size=2), max_size=4), st.text(max_size=5))


@FAST
@given(st.one_of(st.text(), original_like))
def test_from_original_returns_or_raises_valueerror(text):
    try: g = Genotype.from_original(text)
    except ValueError: return
    assert isinstance(g, Genotype) and g.projector and all(o in PRIMITIVES for l in g.projector for o in l)


@FAST
@given(st.one_of(st.text(), st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | ops,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(['projector', 'predictor', 'space', 'source', 'format', 'x']), inner, max_size=4),
    max_leaves=20))))
def test_from_json_returns_or_raises_valueerror(text):
    try: g = Genotype.from_json(text)
    except ValueError: return
    assert isinstance(g, Genotype) and Genotype.from_json(g.to_json()) == g


@FAST
@given(layers, st.lists(st.lists(ops, min_size=1, max_size=2), max_size=5))
def test_json_round_trip(projector, predictor):
    g = Genotype(projector, predictor)
    assert Genotype.from_json(g.to_json()) == g
    original = f"Genotype(encoder={[list(l) for l in g.projector]!r}, predictor={[list(l) for l in g.predictor]!r})"
    assert Genotype.from_original(original) == g


@FAST
@given(st.lists(st.one_of(st.binary(max_size=40), st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=5), st.integers()))), max_size=6),
       st.booleans())
def test_read_metrics_returns_records_or_names_the_line(tmp_path_factory, lines, trailing_newline):
    path = tmp_path_factory.mktemp('m') / 'metrics.jsonl'
    data = b'\n'.join(lines) + (b'\n' if trailing_newline else b'')
    path.write_bytes(data)
    try: records = read_metrics(path)
    except MetricsFormatError as e:
        assert 'line ' in str(e) and str(path) in str(e)
        return
    assert all(isinstance(r, dict) for r in records)
