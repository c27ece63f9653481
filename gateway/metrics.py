"""Prometheus exposition: metric families built at scrape time from plain counters.

Hot code (the relay, the SIP edge, the capture service) keeps ints and
`gateway.stats.Histogram`s; this collector reads them only when Prometheus
scrapes, in the manner of prometheus_client's gc collector, so metrics cost the
audio loop nothing per packet. Served over HTTP on its own port.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.protocol_log import ProtocolLog
from gateway.stats import LATENCY_BOUNDS_S, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class MetricSpec:
    """One exported family: name (without tonewall_), kind, help, label names, reader."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    read: Callable[[], object] = field(default=lambda: 0)
    """Returns a number, a Histogram, or a mapping {label tuple: number | Histogram}."""


class TonewallCollector(Collector):
    """Builds every `tonewall_*` family from the registered readers at scrape time."""

    def __init__(self, specs: Iterable[MetricSpec]) -> None:
        self.specs = list(specs)

    def collect(self):
        yield InfoMetricFamily("tonewall_build", "Tonewall build information",
                               value={"version": __version__})
        for spec in self.specs:
            yield self._family(spec)

    @staticmethod
    def _family(spec: MetricSpec):
        full = "tonewall_" + spec.name
        value = spec.read()
        rows: Mapping[tuple[str, ...], object]
        rows = value if isinstance(value, Mapping) else {(): value}
        if spec.kind == "histogram":
            fam = HistogramMetricFamily(full, spec.help, labels=spec.labels)
            for labels, hist in rows.items():
                if not isinstance(hist, Histogram):
                    raise TypeError(f"{full} reader must return Histogram values")
                fam.add_metric(list(labels), hist.cumulative(), hist.sum_s)
            return fam
        cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        name = full[: -len("_total")] if spec.kind == "counter" and full.endswith("_total") else full
        fam = cls(name, spec.help, labels=spec.labels)
        for labels, number in rows.items():
            fam.add_metric([str(v) for v in labels], float(number))  # type: ignore[arg-type]
        return fam


class GcPauseMonitor:
    """Times the cyclic garbage collector's passes by generation (`gc.callbacks`): the audio loop
    stops for each one, and a full pass over many live calls' objects is the longest stop
    Python itself makes."""

    def __init__(self) -> None:
        self.histograms = {str(g): Histogram(LATENCY_BOUNDS_S + (0.1, 0.5, 1.0)) for g in range(3)}
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            hist = self.histograms.get(str(info.get("generation")))
            if hist is not None:
                hist.observe(time.perf_counter() - self._started)

    def start(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def stop(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False


class LoopLagMonitor:
    """Measures event-loop lag: how late a periodic callback runs compared with when it was due."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(LATENCY_BOUNDS_S + (0.1, 0.5, 1.0))
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self.interval_s
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = loop.time()
        self.histogram.observe(max(0.0, now - due))
        nxt = now + self.interval_s
        self._handle = loop.call_at(nxt, self._tick, loop, nxt)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def build_registry(specs: Iterable[MetricSpec]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TonewallCollector(specs))
    return registry


async def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve /metrics (and /healthz) over plain HTTP on its own port."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, logger=ProtocolLog("metrics"))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
