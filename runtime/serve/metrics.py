"""The bank cache's and the service's own Prometheus metrics, on a port beside Triton's.

Triton's metrics endpoint (`--metrics-port`) reports requests, queue and compute times per
model; these (`--bank-metrics-port`) report what Triton cannot see:

| metric | kind | meaning |
| --- | --- | --- |
| diffseg_bank_cache_entries | gauge | banks held in memory |
| diffseg_bank_cache_bytes | gauge | bytes they hold |
| diffseg_bank_cache_capacity_bytes | gauge | the bound (`--bank-cache-mb`) |
| diffseg_bank_cache_hits_total / _misses_total / _evictions_total | counter | lookups found / not found, banks dropped |
| diffseg_support_encodes_total | counter | support sets encoded (a registered id is never encoded again) |
| diffseg_support_store_reads_total / _writes_total / _errors_total | counter | bank store traffic, damaged files |
"""

from __future__ import annotations

from runtime.serve.service import FewShotService


class BankMetrics:
    """A prometheus_client collector reading the service's counters at scrape time."""

    def __init__(self, service: FewShotService):
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.service.cache.stats()
        yield GaugeMetricFamily("diffseg_bank_cache_entries", "Support banks held in memory", value=stats.entries)
        yield GaugeMetricFamily("diffseg_bank_cache_bytes", "Bytes the cached banks hold", value=stats.bytes)
        yield GaugeMetricFamily(
            "diffseg_bank_cache_capacity_bytes", "The cache's bound (--bank-cache-mb)", value=stats.capacity_bytes
        )
        yield CounterMetricFamily("diffseg_bank_cache_hits", "Lookups the cache answered", value=stats.hits)
        yield CounterMetricFamily("diffseg_bank_cache_misses", "Lookups the cache did not hold", value=stats.misses)
        yield CounterMetricFamily("diffseg_bank_cache_evictions", "Banks dropped to make room", value=stats.evictions)
        counts = dict(self.service.counts)
        yield CounterMetricFamily("diffseg_support_encodes", "Support sets encoded", value=counts["encodes"])
        for what in ("reads", "writes", "errors"):
            yield CounterMetricFamily(
                f"diffseg_support_store_{what}", f"Bank store {what}", value=counts[f"store_{what}"]
            )


def start_metrics_server(service: FewShotService, address: str, port: int) -> None:
    """Serves the collector's metrics at http://address:port/metrics (a daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(BankMetrics(service))
    start_http_server(port, addr=address, registry=registry)
