"""examples/deploy/grafana-dashboard.json queries exactly the metric names the bot exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipecat_rxdrain.metrics import RxdrainMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "deploy" / "grafana-dashboard.json"

# Series names per family type, as the text exposition writes them (the parts a query may name).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
PROMQL_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp_max", "clamp_min", "count", "count_over_time", "delta",
    "deriv", "floor", "histogram_quantile", "increase", "irate", "label_replace", "max", "max_over_time", "min",
    "min_over_time", "quantile", "rate", "round", "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time",
    "time", "topk", "bottomk", "vector",
}


def exported_series() -> dict[str, str]:
    """{series name a query may use: family type}, from a live registry of our families."""
    out = {}
    for family in RxdrainMetrics().registry.collect():
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = family.type
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, durations removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\boffset\s+\w+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call:
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
        elif word not in PROMQL_KEYWORDS and not re.fullmatch(r"\d.*|[eE]\d*|inf|nan|Inf|NaN", word):
            names.add(word)
    return names


def check_expr(expr: str, exported: dict[str, str]) -> list[str]:
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"{expr!r} names no metric")
    for name in names:
        kind = exported.get(name)
        if kind is None:
            problems.append(f"{expr!r} uses {name!r}, which the bot does not export")
        elif kind == "counter" and not re.search(rf"\b(rate|increase|irate)\(\s*{re.escape(name)}\b", expr):
            problems.append(f"{expr!r} reads counter {name!r} without rate()/increase()")
        elif name.endswith("_bucket") and not re.search(r"histogram_quantile\(.*\bby\s*\([^)]*\ble\b", expr):
            problems.append(f"{expr!r} reads {name!r} outside histogram_quantile(... by (le) ...)")
    return problems


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return out


def test_every_query_names_only_exported_metrics():
    exported = exported_series()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    problems = [f"{title}: {p}" for title, expr in exprs for p in check_expr(expr, exported)]
    assert problems == []


def test_every_exported_family_is_on_the_dashboard():
    families = {f.name: f.type for f in RxdrainMetrics().registry.collect()}
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    unused = [name for name, kind in families.items() if not any(name + s in used for s in SUFFIXES[kind])]
    assert unused == []


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["type"] == "prometheus"
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
    assert any(v["name"] == "datasource" for v in dash["templating"]["list"])


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rxdrain_active_calls_total)", "does not export"),  # a gauge has no _total
        ("sum(rxdrain_calls_started)", "does not export"),  # a counter is exposed as _total
        ("rxdrain_stt_write_seconds", "does not export"),  # a histogram has no bare series
        ("sum(rate(rxdrain_active_calls_bucket[5m]))", "does not export"),
        ("rxdrain_calls_started_total", "without rate"),
        ("sum(rate(rxdrain_stt_write_seconds_bucket[5m]))", "histogram_quantile"),
        ("sum(rate(nonexistent_total[5m]))", "does not export"),
        ("vector(1)", "names no metric"),
    ],
)
def test_the_checker_rejects_wrong_names(expr, problem):
    assert any(problem in p for p in check_expr(expr, exported_series()))


def test_the_checker_reads_promql():
    expr = 'histogram_quantile(0.95, sum by (le, instance) (rate(rxdrain_eos_to_final_seconds_bucket{job="bot",code=~"A|B"}[$__rate_interval] offset 1h)))'
    assert metric_names(expr) == {"rxdrain_eos_to_final_seconds_bucket"}
    assert metric_names("sum(a) / on(instance) group_left(x) sum(b_total) > bool 2e3") == {"a", "b_total"}
