"""Prometheus metrics, written in the text exposition format (version 0.0.4) by hand:
counters, gauges and histograms with labels, safe to update from any thread.

`ServerMetrics` declares everything the server reports; `render()` gives the `/metrics`
body. Gauges whose value lives elsewhere (queue depth, loaded models) are read at scrape
time through callbacks rather than kept in sync.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable

# Latency buckets in seconds: fine around a token's time on a laptop, coarse beyond.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help, labels=()):
        super().__init__(name, help, labels)
        self._values: dict[tuple, float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value set directly, or read from `source()` at scrape time (label tuples to values)."""

    kind = "gauge"

    def __init__(self, name, help, labels=(), source: Callable[[], dict] | None = None):
        super().__init__(name, help, labels)
        self._values: dict[tuple, float] = {} if self.labelnames or source else {(): 0.0}
        self.source = source

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def lines(self) -> list[str]:
        if self.source is not None:
            items = sorted(self.source().items())
        else:
            with self._lock:
                items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help, buckets: Iterable[float], labels=()):
        super().__init__(name, help, labels)
        self.bounds = tuple(sorted(buckets))
        self._series: dict[tuple, list] = {}  # key -> [bucket counts..., sum, count]
        if not self.labelnames:
            self._series[()] = [0] * len(self.bounds) + [0.0, 0]

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0] * len(self.bounds) + [0.0, 0]
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    series[i] += 1
                    break
            series[-2] += value
            series[-1] += 1

    def count(self, **labels) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return series[-1] if series else 0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = []
        for key, series in items:
            cumulative = 0
            for bound, n in zip(self.bounds, series):
                cumulative += n
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {cumulative}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, key, inf)} {series[-1]}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {series[-1]}")
        return out


class ServerMetrics:
    """Everything `/metrics` reports. Gauges read live state through `bind_sources`."""

    def __init__(self):
        self.http_requests = Counter(
            "localllm_http_requests_total", "HTTP requests answered, by route, method and status code.",
            ("route", "method", "status"))
        self.generations = Counter(
            "localllm_generations_total", "Generations finished, by API shape and finish reason "
            "(stop, length, cancelled, error).", ("api", "finish_reason"))
        self.rejected = Counter(
            "localllm_requests_rejected_total", "Generation requests refused before running, by reason.",
            ("reason",))
        self.prompt_tokens = Counter("localllm_prompt_tokens_total", "Prompt tokens of finished generations.")
        self.generated_tokens = Counter("localllm_generated_tokens_total", "Tokens generated.")
        self.cache_hits = Counter(
            "localllm_prefix_cache_hits_total", "Generations that reused at least one cached prompt token.")
        self.cache_misses = Counter(
            "localllm_prefix_cache_misses_total", "Generations that prefilled their whole prompt.")
        self.cached_tokens = Counter(
            "localllm_prefix_cache_tokens_total", "Prompt tokens served from the KV cache instead of prefill.")
        self.draft_tokens = Counter(
            "localllm_draft_tokens_total", "Tokens proposed by speculative drafting.")
        self.accepted_tokens = Counter(
            "localllm_draft_accepted_tokens_total", "Drafted tokens the model accepted.")
        self.ttft = Histogram(
            "localllm_time_to_first_token_seconds",
            "From a generation request's arrival to its first token (model load and queue included).",
            TTFT_BUCKETS)
        self.itl = Histogram(
            "localllm_inter_token_latency_seconds",
            "Time between consecutive tokens as the server receives them from the engine (which hands "
            "tokens over at most every 4 ms, so a fast model's tokens arrive in small bursts).", ITL_BUCKETS)
        self.duration = Histogram(
            "localllm_generation_duration_seconds", "From arrival to the end of a generation.",
            DURATION_BUCKETS)
        self.load_seconds = Histogram(
            "localllm_model_load_seconds", "Time to load a model.", DURATION_BUCKETS)
        self.queue_depth = Gauge("localllm_queue_depth", "Generation requests waiting to run.")
        self.running = Gauge("localllm_requests_running", "Generations running on an engine.")
        self.models_loaded = Gauge(
            "localllm_models_loaded", "Models in memory, by state (loading, ready, unloading).", ("state",))
        self._all = [
            self.http_requests, self.generations, self.rejected, self.queue_depth, self.running,
            self.models_loaded, self.prompt_tokens, self.generated_tokens, self.cache_hits,
            self.cache_misses, self.cached_tokens, self.draft_tokens, self.accepted_tokens,
            self.ttft, self.itl, self.duration, self.load_seconds,
        ]

    def bind_sources(self, queue_depth: Callable[[], int], running: Callable[[], int],
                     models: Callable[[], dict[str, int]]) -> None:
        self.queue_depth.source = lambda: {(): float(queue_depth())}
        self.running.source = lambda: {(): float(running())}
        states = ("loading", "ready", "unloading")
        self.models_loaded.source = lambda: {(s,): float(models().get(s, 0)) for s in states}

    def observe_finished(self, api: str, finish_reason: str, stats) -> None:
        self.generations.inc(api=api, finish_reason=finish_reason)
        if stats is None:
            return
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated_tokens.inc(stats.generated_tokens)
        if stats.prompt_tokens:
            (self.cache_hits if stats.cached_tokens > 0 else self.cache_misses).inc()
        self.cached_tokens.inc(stats.cached_tokens)
        self.draft_tokens.inc(stats.draft_tokens)
        self.accepted_tokens.inc(stats.accepted_tokens)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines += metric.header()
            lines += metric.lines()
        return "\n".join(lines) + "\n"
