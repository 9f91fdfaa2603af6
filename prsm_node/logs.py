"""structlog set-up: JSON lines to `<data_dir>/logs/node.log`, readable lines on stderr.

Both outputs go through the stdlib logging handlers (rotation comes from
RotatingFileHandler), each with its own structlog renderer. Events are named
(`event="peers.connected" peer=...`), never f-strings, so the JSON file can be queried.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

from prsm_node.config import LogConfig

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(log_dir: Path | None, config: LogConfig) -> None:
    """Route structlog events to the rotating JSON file (if `log_dir`) and to stderr."""
    level = getattr(logging, config.level.upper())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_formatter(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())))
    root.addHandler(console)
    if log_dir is not None:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_dir / "node.log",
            maxBytes=config.file_size_max,
            backupCount=config.file_count_max,
            encoding="utf-8",
        )
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        root.addHandler(file_handler)
    # libp2p logs a line per failed dial and stream at INFO; keep them out of ours.
    logging.getLogger("libp2p").setLevel(max(level, logging.WARNING))
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _formatter(renderer: structlog.types.Processor) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
