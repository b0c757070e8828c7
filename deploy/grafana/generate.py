"""Generate the Grafana dashboard (dashboards/zspa-vllm.json) with grafana-foundation-sdk.

    .venv/bin/python deploy/grafana/generate.py          # rewrite the JSON
    .venv/bin/python deploy/grafana/generate.py --check  # exit 1 if the JSON is stale

The committed JSON is what Grafana provisions; tests/server/test_prometheus.py runs
every query in it against a real Prometheus scraping a real zspa-serve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUT = Path(__file__).parent / "dashboards" / "zspa-vllm.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioned uid
SEL = '{model_name=~"$model_name"}'
WINDOW = "[$__rate_interval]"


def rate(metric: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group}(rate({metric}{SEL}{WINDOW}))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    group = ", ".join(["le", by] if by else ["le"])
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{SEL}{WINDOW})))"


BEFORE = rate("zspa_visual_tokens_before_pruning_total")
AFTER = rate("zspa_visual_tokens_after_pruning_total")

# (title, unit, [(expr, legend)], description); 4 panels per row of width 6.
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    (
        "Visual tokens per second: before vs after pruning",
        "short",
        [(BEFORE, "before"), (AFTER, "after")],
        "Visual tokens the images would have used, and those actually prefilled.",
    ),
    (
        "Effective prune ratio",
        "percentunit",
        [(f"1 - {AFTER} / {BEFORE}", "effective")],
        "Share of visual tokens dropped, over all requests with images.",
    ),
    (
        "Visual tokens saved per second",
        "short",
        [(f"{BEFORE} - {AFTER}", "saved")],
        "KV-cache slots and prefill tokens pruning did not spend.",
    ),
    (
        "KV-cache memory saved per second",
        "Bps",
        [(rate("zspa_kv_cache_bytes_saved_total"), "saved")],
        "Bytes of KV cache the pruned visual tokens would have taken (all layers and "
        "tensor-parallel ranks, at the KV-cache dtype): what lets a replica admit more requests.",
    ),
    (
        "Requested prune ratio (p50 / p90)",
        "percentunit",
        [
            (quantile(0.5, "zspa_requested_prune_ratio"), "p50"),
            (quantile(0.9, "zspa_requested_prune_ratio"), "p90"),
        ],
        "Ratio each request with images asked for (0: pruning off).",
    ),
    (
        "Requests with images by method",
        "reqps",
        [(rate("zspa_requests_total", "method"), "{{method}}")],
        "'none': the request did not prune (ratio 0).",
    ),
    (
        "Selection time per call by method (p50 / p99)",
        "s",
        [
            (quantile(0.5, "zspa_selection_seconds", "method"), "p50 {{method}}"),
            (quantile(0.99, "zspa_selection_seconds", "method"), "p99 {{method}}"),
        ],
        "One batched selector call in the worker (one engine step's items of one method); "
        "other requests' decode waits for it.",
    ),
    (
        "Selection p99 as a share of TTFT p50",
        "percentunit",
        [
            (
                f"{quantile(0.99, 'zspa_selection_seconds')} / "
                f"{quantile(0.5, 'vllm:time_to_first_token_seconds')}",
                "selection p99 / TTFT p50",
            )
        ],
        "What pruning costs against what it saves: above ~25% the selector eats the prefill "
        "it shortens (alert ZspaSelectionSlow).",
    ),
    (
        "KV-cache usage",
        "percentunit",
        [(f"max by (model_name) (vllm:kv_cache_usage_perc{SEL})", "{{model_name}}")],
        "Share of KV-cache blocks in use (1 = full: requests queue or get preempted).",
    ),
    (
        "Time to first token",
        "s",
        [
            (quantile(0.5, "vllm:time_to_first_token_seconds"), "p50"),
            (quantile(0.99, "vllm:time_to_first_token_seconds"), "p99"),
        ],
        "Prefill latency: where pruning pays off first.",
    ),
    (
        "End-to-end request latency",
        "s",
        [
            (quantile(0.5, "vllm:e2e_request_latency_seconds"), "p50"),
            (quantile(0.99, "vllm:e2e_request_latency_seconds"), "p99"),
        ],
        "From arrival to the last token.",
    ),
    (
        "Token throughput",
        "short",
        [
            (rate("vllm:prompt_tokens_total"), "prompt tokens/s"),
            (rate("vllm:generation_tokens_total"), "generated tokens/s"),
        ],
        "Prompt tokens already count the pruned length.",
    ),
    (
        "Finished requests per second",
        "reqps",
        [(rate("vllm:request_success_total", "finished_reason"), "{{finished_reason}}")],
        "By finish reason (stop, length, abort).",
    ),
    (
        "Requests running / waiting",
        "short",
        [
            (f"sum(vllm:num_requests_running{SEL})", "running"),
            (f"sum(vllm:num_requests_waiting{SEL})", "waiting"),
        ],
        "Waiting requests mean the KV cache or the batch budget is full.",
    ),
]
STATS: list[tuple[str, str, str]] = [
    (
        "Visual tokens saved (range)",
        "short",
        "sum(increase(zspa_visual_tokens_before_pruning_total"
        f"{SEL}[$__range])) - sum(increase(zspa_visual_tokens_after_pruning_total{SEL}[$__range]))",
    ),
    ("Prompt tokens (range)", "short", f"sum(increase(vllm:prompt_tokens_total{SEL}[$__range]))"),
    (
        "KV-cache memory saved (range)",
        "bytes",
        f"sum(increase(zspa_kv_cache_bytes_saved_total{SEL}[$__range]))",
    ),
]


def target(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def build() -> dict:
    board = (
        dashboard.Dashboard("zspa-vllm: visual-token pruning")
        .uid("zspa-vllm")
        .description("What ZSPAPrune saves, next to vLLM's own serving metrics.")
        .tags(["vllm", "zspa", "pruning"])
        .refresh("10s")
        .time("now-1h", "now")
        .with_variable(
            dashboard.QueryVariable("model_name")
            .label("model")
            .datasource(DATASOURCE)
            .query("label_values(vllm:num_requests_running, model_name)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, unit, expr in STATS:
        board = board.with_panel(
            stat.Panel()
            .title(title)
            .unit(unit)
            .datasource(DATASOURCE)
            .with_target(target(expr, title, "A"))
            .height(4)
            .span(12)
        )
    for title, unit, exprs, description in PANELS:
        panel = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .unit(unit)
            .datasource(DATASOURCE)
            .height(8)
            .span(12)
        )
        for i, (expr, legend) in enumerate(exprs):
            panel = panel.with_target(target(expr, legend, chr(ord("A") + i)))
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv[1:]:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(OUT)
