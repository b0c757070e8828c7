"""``zspa-serve MODEL [any vllm serve option] [--prune-ratio R] [--prune-method M] ...``

The same launch path as ``vllm serve`` (its parser, its ``ServeSubcommand.cmd``:
single or multiple API servers, data parallel, headless), plus:

* ``--prune-ratio / --prune-method / --prune-core-ratio / --prune-scope``: defaults for
  requests that do not set them, passed to the engine as ``mm_processor_kwargs`` defaults (so the
  processor applies them; precedence request > these > built-in);
* ``--max-request-body-bytes``: 413 above it;
* our middleware, appended to vLLM's ``--middleware`` list so each API-server process
  builds it into its app.

Works where the ``vllm`` console script does not (the CPU wheel): nothing here reads
vLLM's distribution metadata.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from zspa_vllm import config, selectors
from zspa_vllm.option import RATIO
from zspa_vllm.seam import compat

MIDDLEWARE = (
    # Outermost last: vLLM applies them in order with add_middleware.
    "zspa_server.admission.AdmissionMiddleware",
    "zspa_server.middleware.PruningUsageMiddleware",
    "zspa_server.security.ApiKeyMiddleware",
    "zspa_server.security.BodySizeLimitMiddleware",
    "zspa_server.errors.OpenAIErrorMiddleware",
)


def make_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    make_arg_parser = compat.resolve("make_arg_parser")  # moved in vLLM 0.33

    from zspa_server.security import DEFAULT_MAX_BODY_BYTES

    parser = make_arg_parser(
        FlexibleArgumentParser(
            prog="zspa-serve",
            description="vLLM's OpenAI-compatible server with per-request visual-token "
            "pruning (ZSPAPrune). Every `vllm serve` option is accepted.",
        )
    )
    group = parser.add_argument_group("visual-token pruning (zspa-vllm)")
    group.add_argument(
        RATIO.flag,
        type=float,
        default=None,
        help=f"Default {RATIO.help}, {RATIO.allowed}.",
    )
    group.add_argument(
        "--prune-method",
        choices=config.method_names(),
        default=None,
        help=f"Default selector (built-in: {config.DEFAULT_METHOD}).",
    )
    # One flag per selector option (zspa's --prune-core-ratio; a plugin's own).
    for option in selectors.options().values():
        group.add_argument(
            option.flag,
            type=float,
            default=None,
            help=f"Default {option.help}, {option.allowed} (built-in: {option.default}).",
        )
    group.add_argument(
        "--prune-scope",
        choices=config.SCOPES,
        default=None,
        help="Default prompt text that selects an image's tokens (built-in: turn, which keeps "
        "earlier turns of a chat in the prefix cache; prompt: all text of the prompt).",
    )
    group.add_argument(
        "--allow-private-media-urls",
        action="store_true",
        help="Fetch media URLs that resolve to loopback, private, link-local or other "
        "non-public addresses (refused by default: server-side request forgery). "
        "--allowed-media-domains hosts are always allowed.",
    )
    group.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="Reject larger request bodies with HTTP 413.",
    )
    return parser


def prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fold our options into vLLM's; exits with a clear message on a bad value."""
    defaults = dict(args.mm_processor_kwargs or {})
    for key in config.option_keys():
        value = getattr(args, key)  # argparse's dest of --prune-x-y is prune_x_y
        if value is not None:
            defaults[key] = value
    try:
        config.resolve(None, defaults)  # the processor would refuse every request later
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_request_body_bytes <= 0:
        parser.error("--max-request-body-bytes must be a positive number of bytes")
    args.mm_processor_kwargs = defaults or None
    args.middleware = [*args.middleware, *(m for m in MIDDLEWARE if m not in args.middleware)]
    return args


# Prometheus multiprocess directory for every process this server starts (see
# zspa_vllm/seam/selection_metrics.py): the selection time is recorded in the worker processes.
_metrics_dir: tempfile.TemporaryDirectory | None = None
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics_across_processes() -> None:
    """Before anything imports prometheus_client: give this process and the engine-core and
    worker processes it spawns one multiprocess metrics directory, so /metrics also shows
    what they record. vLLM does the same for --api-server-count > 1; an operator's own
    directory is kept. Removed at exit (it holds this run's samples only)."""
    global _metrics_dir
    if os.environ.get(MULTIPROC_ENV):
        return
    if "prometheus_client" in sys.modules:  # too late for this process to join
        return
    _metrics_dir = tempfile.TemporaryDirectory(prefix="zspa-metrics-")
    os.environ[MULTIPROC_ENV] = _metrics_dir.name
    # vLLM warns that a user-set directory must be wiped between runs; this one is new.
    logging.getLogger("vllm.v1.metrics.prometheus").addFilter(
        lambda record: "PROMETHEUS_MULTIPROC_DIR was set by user" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> None:
    share_metrics_across_processes()
    compat.require("server")
    from vllm.entrypoints.cli.serve import ServeSubcommand

    cli_env_setup = compat.resolve("cli_env_setup")  # moved in vLLM 0.33

    cli_env_setup()  # as `vllm serve`: spawn, not fork, for worker processes
    parser = make_parser()
    args = prepare(parser.parse_args(sys.argv[1:] if argv is None else argv), parser)
    command = ServeSubcommand()
    command.validate(args)
    command.cmd(args)


if __name__ == "__main__":
    main()
