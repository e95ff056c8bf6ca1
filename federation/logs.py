"""Our log lines, and which lines a console shows.

Messages go through Flower's logger ("flwr.swarmloop" propagates to "flwr"), so they land wherever
Flower's do: the simulation's log, `flwr run --stream` of a deployment, a SuperNode's log. They
carry a "[swarmloop]" tag, which lets a console show them and Flower's warnings while the full
logs go to RUN/logs/.
"""

from __future__ import annotations

import logging
from typing import Any

TAG = "[swarmloop]"


class _Tagged(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{TAG} {msg}", kwargs


def get_logger() -> logging.LoggerAdapter:
    return _Tagged(logging.getLogger("flwr.swarmloop"), {})


# Flower warnings that say nothing to a swarmloop user.
_NOISE = ("DEPRECATED FEATURE", "fraction_evaluate is set to 0.0", "This is a deprecated feature",
          "entirely in future versions")


def shown_on_console(line: str, level: int = logging.INFO) -> bool:
    if any(noise in line for noise in _NOISE):
        return False
    return TAG in line or level >= logging.WARNING or "WARNING" in line or "ERROR" in line


class ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return shown_on_console(record.getMessage(), record.levelno)
