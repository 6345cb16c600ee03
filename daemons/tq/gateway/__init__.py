"""tq-gateway: tq's operations over HTTP (docs/gateway.md), a client of tq-host like tqctl, on aiohttp.

Modules: service.py (sockets, TLS, signals, sd_notify, reload), app.py (the application, its middleware and
`make_app`), hostlink.py (connections to tq-host, multiplexed by rid, one per token), auth.py (tokens, and the
refusal of a flood of bad ones), limits.py (connection count, slow clients), errors.py (the JSON error answers),
api.py (/api/v1 and /metrics), live.py (Server-Sent Events), xmlrpc.py (/RPC2), page.py (the dashboard: /, its
login and static files from static/, /api/v1/live), summary.py (the dashboard's summary a second).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from .. import log
from ..daemon import EXIT_CONFIG, StartError, command_line, load_config


def build_parser() -> argparse.ArgumentParser:
    """tq-gateway's command line (also the source of its man page, tq-gateway(8))."""
    return command_line("tq-gateway", "tq over HTTP: a JSON API, Server-Sent Events, Prometheus metrics and "
                        "XML-RPC, as a client of tq-host.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config("tq-gateway", args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.check_config:  # (the unit's ExecReload= runs it first: a reload of a bad configuration fails)
        return 0
    logger = log.setup("tq-gateway", cfg.log.level)
    from .service import Gateway  # (aiohttp: imported once the configuration is known good)

    async def run() -> int:
        gateway = Gateway(cfg, args.config, logger)
        return await gateway.serve()

    try:
        return asyncio.run(run())
    except StartError as e:
        logging.getLogger("tq-gateway").error("cannot start: %s", e)
        return 1
