"""The `l2c` command line: one entry point, one module per subcommand, registered in COMMANDS.

Each command module holds HELP, add_arguments(parser) and run(args) -> exit code. `main(argv) -> int` is testable.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import (
    compare,
    demo,
    evaluate,
    export_diffusers,
    export_model,
    fetch_mnist,
    prepare_data,
    router,
    sample,
    train_classifier,
    train_model,
    train_router,
)
from .common import Formatter, OneLineParser, resolve_sampling_defaults
from .errors import is_user_error, report_bug, report_interrupt, report_user_error
from .folders import claimed
from .validate import check_arguments, output_folders

COMMANDS = {
    "sample": sample,
    "router": router,
    "train-router": train_router,
    "train-model": train_model,
    "export-model": export_model,
    "export-diffusers": export_diffusers,
    "prepare-data": prepare_data,
    "fetch-mnist": fetch_mnist,
    "evaluate": evaluate,
    "train-classifier": train_classifier,
    "compare": compare,
    "demo": demo,
}
DISTRIBUTED_COMMANDS = ("sample", "train-router")  # the commands that split their work over torchrun processes
# The commands that show progress (l2c/utils/progress.py): each takes --quiet
LONG_COMMANDS = ("sample", "train-router", "train-model", "prepare-data", "evaluate", "train-classifier", "compare")
LONG_COMMANDS += ("demo",)
QUIET_HELP = "no progress output (otherwise a bar on a terminal, a line about every 10 %% or minute in a log)"

EPILOG = """examples:
  l2c demo                                   # train a router on the bundled dit-mnist, compare cached / uncached
  l2c sample --model dit-mnist --steps 20 --cfg 1.5 --seeds 0-63 --classes 0-9 --out grid.png
  l2c sample --model flux-mnist --seeds 0-63 --out flux.png   # its own defaults: flow-matching Euler, 28 steps, CFG 2
  l2c router import DDIM20_router.pt --arch dit --steps 20 --out ddim20.safetensors
  l2c router show ddim20.safetensors --threshold 0.1 --model DiT-XL/2 --json
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="l2c", description=__doc__, epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"l2c {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=Formatter)
        module.add_arguments(command)
        if name in LONG_COMMANDS:
            command.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    return p


def package_version() -> str:
    """The installed distribution's version; l2c.__version__ when run from a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("l2c")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    from ..utils import distributed
    from ..utils.cpu_memory import keep_freed_memory
    from ..utils.progress import quiet

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad argument (2, its one line already printed)
        return e.code
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        resolve_sampling_defaults(args)  # --sampler / --steps / --cfg left out: the model's own
        check_arguments(args)  # numbers, device and paths, before any work
        if str(getattr(args, "device", "cpu")).startswith("cpu"):
            keep_freed_memory()  # a quarter off eager CPU sampling (l2c/utils/cpu_memory.py)
        if distributed.launched_with_torchrun():
            if args.command not in DISTRIBUTED_COMMANDS:
                raise ValueError(f"under torchrun only {' and '.join(DISTRIBUTED_COMMANDS)} run; start it plainly")
            args.device = distributed.init(args.device)
        distributed.barrier()  # every process has checked the folders before the first marks them (folders.py)
        folders = output_folders(args) if distributed.is_main() else []
        with quiet(getattr(args, "quiet", False)), claimed(folders, args.command):
            status = COMMANDS[args.command].run(args) or 0
        # A process that tears down its gloo group while a peer is still writing can be aborted (SIGABRT) by gloo's
        # threads; all processes leave together instead.
        distributed.barrier()
        return status
    except KeyboardInterrupt:
        return report_interrupt(args.command, args)
    except Exception as e:
        if is_user_error(e):
            return report_user_error(args.command, e)
        return report_bug(args.command)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
