"""The ``rayjac`` command: ``run``, ``submit``, ``show`` and ``plot``, thin over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from typing import Any, Iterator, Sequence

from ..runs._config import ConfigError, load_config

_EPILOG = """examples:
  rayjac run configs/quickstart.yaml
  rayjac run configs/lorenz96.yaml --set params.n=80 --set execution.shards=8
  rayjac submit configs/lorenz96.yaml --address http://HEAD:8265 --set output.path=/shared/l96
  rayjac show results/quickstart
  rayjac plot results/quickstart -o quickstart.png
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rayjac`` command line; returns the exit code (0 on success).

    User errors (a bad config, a missing module or path, an existing result) print a short
    message on stderr and return 2 (config) or 1 (anything else), without a traceback; set
    ``RAYJAC_TRACEBACK=1`` to see one.

    Example:
        >>> main(["run", "no-such-config.yaml"])
        2
    """
    with _stop_on_signals():
        try:
            return _main(argv)
        except SystemExit as exit_:  # Ray's own SIGTERM handler, active while Ray starts
            if exit_.code == 15:
                _stop(15, None)
            raise


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except BrokenPipeError:  # stdout closed early (`rayjac show ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("rayjac: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- the CLI's one place that turns errors into codes
        if os.environ.get("RAYJAC_TRACEBACK"):
            traceback.print_exc()
        print(f"rayjac {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM end the command at once, whatever it is doing: what it
    started on Ray is stopped (an embedded Ray with every process under it), nothing more is
    published, and it exits 130 (143). A KeyboardInterrupt could be swallowed (Python ignores
    exceptions raised in some callbacks, e.g. JAX's garbage-collection hook), so the handler
    exits itself rather than raising."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:  # the Python API (tests, notebooks) keeps its own handlers
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _stop(signum: int, frame: Any) -> None:
    print("rayjac: interrupted" if signum == 2 else "rayjac: terminated", file=sys.stderr,
          flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    engine = sys.modules.get("rayjac.engine")  # only what this process imported can be running
    if engine is not None:
        with contextlib.suppress(Exception):
            engine.stop_now()
    os._exit(128 + signum)


def _message(err: Exception) -> str:
    if isinstance(err, (ConfigError, OSError, ValueError, TypeError)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayjac", description="Forward-mode Jacobians of JAX functions, in process or "
        "over Ray workers, stored as Arrow tables.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a config (a single job or a sweep)")
    run.add_argument("--address", help="Ray cluster to join ('auto', 'ray://host:10001'); "
                     "default: the config's execution.address, else an embedded local Ray")
    submit = sub.add_parser("submit", help="submit a config to a cluster as a Ray job")
    submit.add_argument("--address", help="the Ray dashboard, e.g. http://HEAD:8265 "
                        "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job's logs and exit with its outcome")
    for cmd in (run, submit):
        cmd.add_argument("config", metavar="CONFIG", help="a YAML config, e.g. configs/x.yaml")
        cmd.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="override a dotted key (value parsed as "
                         "YAML), e.g. --set params.n=80; repeatable")
    run.set_defaults(handler=_run)
    submit.set_defaults(handler=_submit)
    show = sub.add_parser("show", help="summarise a result (or a sweep's runs)")
    show.add_argument("result", metavar="RESULT", help="a result folder or a sweep folder")
    show.set_defaults(handler=_show)
    plot = sub.add_parser("plot", help="draw each Jacobian block, its singular values and its "
                          "spectrum (or a sweep's stability diagram)")
    plot.add_argument("result", metavar="RESULT", help="a result folder or a sweep folder")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image file")
    plot.set_defaults(handler=_plot)
    return parser


# The handlers import what they need when they run: the arguments and the config are checked
# first, in a fraction of a second, before JAX and Ray load (seconds).

def _run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"execution.address={json.dumps(args.address)}")
    config = load_config(args.config, overrides)
    from ..runs import run

    try:
        records = run(config)  # progress on stderr: a live bar on a terminal, else lines
    except ConfigError as err:  # found while running (factory, grad_vars): name the file too
        raise ConfigError(err.problems, args.config) from None
    if not config.sweep:
        print(f"wrote {records[0].path}")
        return 0
    failed = [r for r in records if r.status == "failed"]
    for record in failed:
        print(f"failed: {record.run_id}: {record.error.splitlines()[0]}", file=sys.stderr)
    return 1 if failed else 0


def _submit(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from ..runs import submit

    _, code = submit(config, args.address, wait=args.wait, say=lambda line: print(line,
                                                                                  flush=True))
    return code


def _show(args: argparse.Namespace) -> int:
    from ..runs import read_runs_table
    from ..store import load
    from ._show import summarize

    table = read_runs_table(args.result)
    if table is not None:  # a sweep's folder
        print(_format_rows(table.to_pylist()))
        return 0
    print(summarize(load(args.result)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ..runs import read_runs_table
    from ..store import load
    from ._plot import plot
    from ._spectra import plot_sweep

    table = read_runs_table(args.result)
    if table is not None:  # a sweep's folder: its stability diagram
        print(f"wrote {plot_sweep(args.result, args.output, table)}")
        return 0
    print(f"wrote {plot(load(args.result), args.output)}")
    return 0


def _format_rows(rows: list[dict]) -> str:
    cells = [list(rows[0])] + [["-" if v is None else str(v) for v in r.values()] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)
