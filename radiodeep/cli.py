"""The ``radiodeep`` command line: run, demo, validate, synth (weights, extract-deep: :mod:`radiodeep.cli_deep`).

Only this module configures logging handlers and progress bars; the library
itself logs through ``logging.getLogger(__name__)`` and never adds handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ExitCode, Terminated

log = logging.getLogger("radiodeep")


def _setup_logging(verbosity: int, logfile: Path | None = None) -> None:
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks
    root = logging.getLogger("radiodeep")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if not isinstance(h, logging.NullHandler):
            root.removeHandler(h)
            h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)


def _cmd_validate(args) -> int:
    from .config import ConfigError, load_config
    from .validate import check_routes, load_cohort

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        if err.config is None:  # not even the schema holds: nothing more can be checked
            print(str(err), file=sys.stderr)
            return 2
        # files missing or the label named twice: list the rest too (every problem in one pass)
        problems = list(err.problems) + [p for p in check_routes(err.config) if "file not found" not in p]
        if err.config.resolve(err.config.cohort.manifest).is_file():
            more = load_cohort(err.config, check_images=not args.no_images, progress=args.progress)
            problems += more.lines()
        print(str(ConfigError(problems, err.source)), file=sys.stderr)
        return 2
    report = load_cohort(cfg, check_images=not args.no_images, progress=args.progress)
    report.problems[:0] = check_routes(cfg)
    n = len(report.cohort) if report.cohort is not None else 0
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.ok:
        labels = report.cohort.labels
        counts = {v: labels.count(v) for v in sorted(set(labels))}
        print(f"config OK; cohort OK: {n} cases, labels {counts}, positive = {report.cohort.positive_label!r}")
        return 0
    lines = report.lines()
    print(f"{len(lines)} problem(s) in {args.config} ({n} cases read):", file=sys.stderr)
    for line in lines:
        print(f"  - {line}", file=sys.stderr)
    if report.failures and not report.problems and cfg.cohort.on_invalid == "skip":
        print(f"cohort.on_invalid is 'skip': a run would exclude {len(report.failures)} case(s) "
              "and list them in the report", file=sys.stderr)
    return 1


def _cmd_synth(args) -> int:
    from .synth import make_cohort

    if args.pair:  # two cohorts acquired differently, for external validation
        from .synth import make_cohort_pair

        manifest = make_cohort_pair(args.out, n_train=args.cases, n_test=args.cases, seed=args.seed,
                                    modality=args.modality)
        print(f"wrote two phantom {args.modality.upper()} cohorts of {args.cases} cases (split: train = "
              f"cohort 1, test = cohort 2, acquired differently): {manifest}")
        return 0
    manifest = make_cohort(args.out, n_cases=args.cases, seed=args.seed, modality=args.modality,
                           split=args.split)
    print(f"wrote {args.cases} phantom {args.modality.upper()} cases: {manifest}")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (schedulers, ``timeout``, ``docker stop``) stops a run as Ctrl-C does."""
    def handler(signum, frame):
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _locked_run(out: Path, verbosity: int, work) -> tuple[int, object]:
    """Check and lock the output folder, log to it, run ``work()``; (exit code, result)."""
    from .errors import os_fault
    from .outdir import OutputLock, OutputLocked, check_writable
    from .pipeline import RunError

    reason = check_writable(out)
    if reason:
        print(reason, file=sys.stderr)
        return ExitCode.STOPPED, None
    lock = OutputLock(out)
    try:
        lock.acquire()
    except OutputLocked as err:  # before logging: the log file is the other run's
        print(err, file=sys.stderr)
        return ExitCode.STOPPED, None
    try:
        try:
            _setup_logging(verbosity, out / "radiodeep.log")
        except OSError as err:
            _setup_logging(verbosity)
            log.warning("no log file: %s", os_fault(err))
        if lock.taken_over:  # said before the log was set up: say it where it is read
            log.warning("%s", lock.taken_over)
        with _sigterm_as_interrupt():
            return ExitCode.OK, work()
    except RunError as err:
        log.error("%s", err)
        return ExitCode.STOPPED, None
    except OSError as err:  # a foreseeable file-system fault outside the run itself
        log.error("%s", os_fault(err))
        return ExitCode.STOPPED, None
    finally:
        lock.release()


def _cmd_run(args) -> int:
    from .config import ConfigError, load_config
    from .pipeline import exit_code, run

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return ExitCode.CONFIG
    if args.output:
        out = Path(args.output).resolve()
        rel = os.path.relpath(out, cfg.base_dir)  # relative to the study: config.resolved.yaml stays portable
        cfg.output = Path(rel) if not rel.startswith("..") else out
    if not args.progress:
        cfg.execution.progress = False
    code, result = _locked_run(cfg.output_dir, args.verbose + 1, lambda: run(cfg, only=args.only))
    if result is None:
        return code
    print(result.summary())
    code = exit_code(result, cfg)
    if code != ExitCode.OK:
        log.warning("exit code %d: %s", code, _EXIT_MEANING.get(code, ""))
    return code


_EXIT_MEANING = {
    ExitCode.CASES_FAILED: "case(s) failed during extraction (see failures.csv)",
    ExitCode.EXPERIMENT_FAILED: "experiment(s) could not run (see the summary and the log)",
}


def _cmd_demo(args) -> int:
    from .demo import run_demo

    out = Path(args.dir).resolve() / "results"
    code, result = _locked_run(out, args.verbose + 1, lambda: run_demo(
        Path(args.dir), n_cases=args.cases, quick=args.quick, progress=args.progress))
    if result is None:
        return code
    print(result.summary())
    return ExitCode.EXPERIMENT_FAILED if result.experiment_errors else ExitCode.OK


def _cmd_predict(args) -> int:
    from .pipeline import RunError
    from .predict import predict

    out = Path(args.out).resolve() if args.out else Path(args.manifest).resolve().parent / "predictions"

    def work():
        try:
            return predict(args.model, args.manifest, out, experiment=args.experiment, progress=args.progress)
        except ValueError as err:  # a refused model file, a manifest or settings that cannot be used
            raise RunError(str(err)) from None

    code, result = _locked_run(out, args.verbose + 1, work)
    if result is None:
        return code
    print(result.summary())
    return ExitCode.CASES_FAILED if len(result.failures) else ExitCode.OK

def _cmd_describe_model(args) -> int:
    from .learned.architectures import ArchitectureError
    from .learned.summary import describe_model

    try:
        summary = describe_model(args.name, channels=args.channels, size=args.size, n_outputs=args.outputs)
    except ArchitectureError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(summary.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cli_deep import add_commands, add_download_option

    p = argparse.ArgumentParser(
        prog="radiodeep",
        description="Handcrafted (PyRadiomics) and deep (ImageNet CNN) radiomics features, "
                    "in-fold feature selection and leave-one-out evaluation.")
    p.add_argument("--version", action="version", version=f"radiodeep {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    common.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they are also off when stderr is not a terminal)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="validate, extract, evaluate every experiment, report",
                       epilog=ExitCode.describe())
    r.add_argument("config", type=Path, help="study YAML file")
    r.add_argument("--only", choices=["extract", "evaluate"], default=None,
                   help="run only feature extraction, or only the experiments (on the exported features; opens no image)")
    r.add_argument("--output", type=Path, default=None, help="override the config's output folder")
    add_download_option(r)
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("demo", parents=[common],
                       help="make a phantom cohort (if absent) and run the bundled sample study on it")
    d.add_argument("--dir", default="demo", help="folder for the demo cohort and results (default: ./demo)")
    d.add_argument("--cases", type=int, default=40, help="phantom cases (default 40, as published)")
    d.add_argument("--quick", action="store_true", help="smaller settings for a fast smoke run")
    add_download_option(d)
    d.set_defaults(func=_cmd_demo)

    v = sub.add_parser("validate", parents=[common], help="check a config and its cohort, compute nothing")
    v.add_argument("config", type=Path)
    v.add_argument("--no-images", action="store_true", help="check the manifest only, do not open images")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("synth", parents=[common], help="write a phantom cohort (volumes, masks, manifest)")
    s.add_argument("out", type=Path)
    s.add_argument("--cases", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--modality", choices=["ct", "mr"], default="ct")
    s.add_argument("--split", action="store_true", help="add a train/test 'split' column")
    s.add_argument("--pair", action="store_true",
                   help="two cohorts of --cases each, scanned differently (noise, kernel, spacing): "
                        "split train = cohort 1, test = cohort 2")
    s.set_defaults(func=_cmd_synth)
    pr = sub.add_parser("predict", parents=[common],
                        help="score new cases (no labels needed) with a study's saved final model(s)",
                        epilog=ExitCode.describe())
    pr.add_argument("model", type=Path, help="a study's output folder (its models/) or one .joblib model file")
    pr.add_argument("manifest", type=Path, help="CSV of the new cases: case_id, image, mask (no label needed)")
    pr.add_argument("--out", type=Path, default=None,
                    help="folder for predictions_new.csv/.html (default: 'predictions' beside the manifest)")
    pr.add_argument("--experiment", default=None, help="only this experiment's model")
    pr.set_defaults(func=_cmd_predict)
    add_commands(sub, common)  # weights, extract-deep

    m = sub.add_parser("describe-model", parents=[common],
                       help="layer table and parameter count of a CNN (usf1, usf2, usf3 or package.module:Class)")
    m.add_argument("name", help="usf1 | usf2 | usf3 | package.module:Class")
    m.add_argument("--channels", type=int, default=2, help="input channels (default 2)")
    m.add_argument("--size", type=int, default=100, help="input side in pixels (default 100)")
    m.add_argument("--outputs", type=int, choices=[1, 2], default=1, help="1 logit (sigmoid) or 2 (softmax)")
    m.set_defaults(func=_cmd_describe_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .cli_deep import apply_download_option

    apply_download_option(args)  # --allow-download
    if args.command in ("validate", "synth", "weights", "extract-deep", "describe-model"):
        _setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        _say_error(f"{what}: finished cases are cached; run the same command again to resume")
        return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    except OSError as err:  # a full disk, a read-only folder, a file in the way: one line, no traceback
        from .errors import os_fault

        log.debug("file-system error", exc_info=True)
        _say_error(os_fault(err))
        return ExitCode.STOPPED


def _say_error(msg: str) -> None:
    """One line on stderr, and in the log file when there is one."""
    if any(not isinstance(h, logging.NullHandler) for h in logging.getLogger("radiodeep").handlers):
        log.error("%s", msg)
    else:
        print(msg, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
