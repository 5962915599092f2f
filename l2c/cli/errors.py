"""How a command's failures reach the user.

A user error (bad input, a missing or unwritable file, a mismatched resume) is one line on stderr and exit code 2.
Ctrl-C is exit code 130 and a line saying what was kept and how to resume. Anything else is a bug in l2c: the
traceback, a line asking for a report, and exit code 1.
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# Errors whose message is written for the user. RuntimeError is one only when l2c raised it itself (a RuntimeError
# from inside torch is a bug until shown otherwise); out-of-memory is always the user's to fix.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    if isinstance(e, USER_ERRORS):
        return True
    return isinstance(e, RuntimeError) and _raised_in_l2c(e)


def _raised_in_l2c(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    package = str(Path(__file__).resolve().parent.parent)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(package)


def one_line(e: BaseException) -> str:
    """The message of a user error on one line (multi-line messages are joined with '; ')."""
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory on the device: lower --batch-size (the images do not depend on it)"
    if isinstance(e, OSError) and e.errno is not None:
        return _os_error(e)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ("; ".join(lines) or type(e).__name__) + _held_suffix(e)


# ---------------------------------------------------------------------------------------------------------------
# What diffusers, transformers and torch print while a model or folder loads. Loading a broken diffusers folder
# makes diffusers log several lines ("Defaulting to unsafe serialization ...") before raising; printed as they come,
# they would precede our one-line error. So they are held while the block runs: shown after it when it succeeds,
# folded into the error's one line when it fails.

LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate", "torch", "safetensors")
HELD_CHARS = 160  # each held message is cut to this length in the error line


@contextmanager
def library_output_held():
    """Hold the library log records and Python warnings of the block (see above)."""
    # Libraries configure their loggers when first imported, which may happen inside the block (diffusers adds its
    # own stderr handler then), so records are caught where every logger hands them to its handlers.
    records: list[logging.LogRecord] = []
    call_handlers = logging.Logger.callHandlers

    def hold(logger, record):
        if record.name.split(".")[0] in LIBRARY_LOGGERS:
            records.append(record)
        else:
            call_handlers(logger, record)

    logging.Logger.callHandlers = hold
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            except Exception as e:
                _attach_held(e, [r.getMessage() for r in records] + [str(w.message) for w in caught])
                raise
    finally:
        logging.Logger.callHandlers = call_handlers
    for record in records:  # the block succeeded: show what was held, as it would have been shown
        call_handlers(logging.getLogger(record.name), record)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _attach_held(e: BaseException, messages: list[str]) -> None:
    flat = [" ".join(m.split()) for m in messages]
    flat = [m if len(m) <= HELD_CHARS else m[: HELD_CHARS - 3] + "..." for m in dict.fromkeys(flat) if m]
    try:
        e.l2c_held_output = flat
    except AttributeError:  # an exception type that takes no attributes keeps its message alone
        pass


def _held_suffix(e: BaseException) -> str:
    held = getattr(e, "l2c_held_output", None)
    return f" (printed while loading: {' | '.join(held)})" if held else ""


def _os_error(e: OSError) -> str:
    # Python's own OSError text ("[Errno 13] Permission denied: 'x'") names no fix; say what to do instead.
    where = f" {e.filename}" if e.filename else ""
    hints = {
        errno.EACCES: "permission denied: choose a path you can write to, or fix its permissions",
        errno.EPERM: "operation not permitted: choose another path",
        errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
        errno.EROFS: "read-only file system: write elsewhere",
        errno.EISDIR: "is a folder: name a file",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ENOENT: "no such file or folder",
    }
    return f"cannot use{where}: {hints.get(e.errno, e.strerror or str(e))}"


def report_user_error(command: str, e: BaseException) -> int:
    print(f"l2c {command}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR


def report_bug(command: str) -> int:
    traceback.print_exc()
    print(
        f"l2c {command}: internal error: this is a bug in l2c, not in your input. Please report it with the "
        "command line and the traceback above.",
        file=sys.stderr,
    )
    return EXIT_BUG


def report_interrupt(command: str, args) -> int:
    print(f"\nl2c {command}: interrupted; {kept_after_interrupt(command, args)}", file=sys.stderr)
    return EXIT_INTERRUPTED


def kept_after_interrupt(command: str, args) -> str:
    """What an interrupted command leaves behind, and how to continue it."""
    if command == "sample" and getattr(args, "npz", None):
        return (
            f"finished batches are kept in {args.npz}.parts; run the same command again to resume "
            "(existing outputs are unchanged)"
        )
    if command == "train-router":
        work = Path(args.out).with_suffix("")
        return (
            f"training progress up to the last checkpoint is kept in {work / 'router_training.pt'}; run the same "
            f"command with --resume to continue (an existing {args.out} is unchanged)"
        )
    if command == "train-model":
        return (
            f"the last checkpoint is kept in {Path(args.out) / 'checkpoint.pt'} (one every --ckpt-every steps); run "
            "the same command with --resume to continue"
        )
    if command == "prepare-data":
        return f"the images prepared so far are kept in {args.out}; run the same command again to resume"
    if command == "demo":
        return (
            f"files already in {args.out} are complete (each is written atomically); run the same command again to "
            "continue its router training from the last checkpoint"
        )
    if command == "compare":
        return f"files already in {args.out} are complete (each is written atomically); the rest was not made"
    return "no file was changed (outputs are written atomically at the end)"
