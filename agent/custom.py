"""Read the firmware's custom metrics and keep each value to the wire contract.

Every value a callback returns is checked with garrison.wire.values.custom_metric, the same
rules the engine applies: NaN or Infinity, an integer past 2^63-1, an ip_list entry that is not
an address, a string over 1,024 characters, a callback that raises. Such a value costs only its
own metric for that report, never the report. It is logged once (a warning) until the metric
recovers, not at every cycle: a device reporting every few minutes would otherwise fill its log
with the same line.
"""

import logging
from typing import Any, Callable, Dict, Mapping

from garrison.wire import names, values

log = logging.getLogger(__name__)


class CustomMetricReader:
    """Calls the callbacks; returns the values that keep the contract, typed ({kind: value})."""

    def __init__(self) -> None:
        self.failing: Dict[str, str] = {}  # metric name -> its last problem, while it fails

    def read(self, callbacks: Mapping[str, Callable[[], Any]]) -> Dict[str, Dict[str, Any]]:
        """{name: {"number" | "number_list" | "string_list" | "ip_list": value}} for this report;
        a callback returning None skips its metric quietly."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, callback in callbacks.items():
            try:
                names.check_custom_metric_name(name)  # checked when added; this covers direct edits
                value = callback()
                if value is not None:
                    out[name] = values.custom_metric(value)[0]
            except Exception as exc:  # the firmware's code, or a value the engine would refuse
                self._failed(name, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))
                continue
            self._recovered(name)
        return out

    def _failed(self, name: str, problem: str) -> None:
        if name not in self.failing:
            log.warning(
                "custom metric %s left out of the report: %s (said once; the metric is "
                "left out until its value is valid again)",
                name,
                problem,
            )
        else:
            log.debug("custom metric %s still left out: %s", name, problem)
        self.failing[name] = problem

    def _recovered(self, name: str) -> None:
        if self.failing.pop(name, None) is not None:
            log.info("custom metric %s is valid again and back in the report", name)
