"""The handler's Prometheus metrics, through TorchServe's metrics cache.

Every name here is declared under ``model_metrics`` in config/metrics.yaml (same names, units and
dimensions); TorchServe only exports declared metrics when model_metrics_auto_detect is off.
Counters are monotonic, so per-batch figures are ratios in PromQL, e.g. items per batch =
rate(InstructorItems) / rate(InstructorBatches), and the padding share =
1 - rate(InstructorTokens) / rate(InstructorPaddedTokens).
"""

from __future__ import annotations

import logging
from typing import Any

from ts.metrics.metric_type_enum import MetricTypes

from handler.encoder import EncodeStats

log = logging.getLogger(__name__)

MODEL_DIMENSIONS = ["ModelName"]
ERROR_DIMENSIONS = ["ModelName", "ErrorType"]


class HandlerMetrics:
    """Registers the metrics once and updates them per TorchServe batch; never raises."""

    def __init__(self, metrics_cache: Any, model_name: str) -> None:
        self._model = model_name
        self._cache = metrics_cache
        counters = ("InstructorBatches", "InstructorItems", "InstructorTokens", "InstructorPaddedTokens",
                    "InstructorTruncatedItems")
        self._counters = {name: self._add(name, "count", MODEL_DIMENSIONS, MetricTypes.COUNTER)
                          for name in counters}
        self._errors = self._add("InstructorErrors", "count", ERROR_DIMENSIONS, MetricTypes.COUNTER)
        self._encode_seconds = self._add("InstructorEncodeSeconds", "seconds", MODEL_DIMENSIONS,
                                         MetricTypes.HISTOGRAM)
        self._padding = self._add("InstructorPaddingPercent", "percent", MODEL_DIMENSIONS, MetricTypes.GAUGE)

    def _add(self, name: str, unit: str, dimensions: list[str], metric_type: MetricTypes) -> Any:
        if self._cache is None:
            return None
        return self._cache.add_metric_to_cache(name, unit, list(dimensions), metric_type)

    def record_batch(self, stats: EncodeStats, truncated_items: int) -> None:
        values = {
            "InstructorBatches": 1,
            "InstructorItems": stats.items,
            "InstructorTokens": stats.tokens,
            "InstructorPaddedTokens": stats.padded_tokens,
            "InstructorTruncatedItems": truncated_items,
        }
        for name, value in values.items():
            self._update(self._counters.get(name), value, [self._model])
        self._update(self._encode_seconds, stats.seconds, [self._model])
        self._update(self._padding, round(100.0 * stats.padding_ratio, 2), [self._model])

    def record_error(self, error_type: str) -> None:
        self._update(self._errors, 1, [self._model, error_type])

    @staticmethod
    def _update(metric: Any, value: float, dimension_values: list[str]) -> None:
        if metric is None:
            return
        try:
            metric.add_or_update(value, dimension_values)
        except Exception:  # a metrics hiccup must never fail a request
            log.warning("could not update a metric", exc_info=True)
