"""Shared command-line plumbing of the jobs: options, checks of --out, the run itself.

The options that need neither model nor data are checked before Ray starts;
the jobs then start Ray and the workers in a background thread
(:func:`start_workers`), so that they start while the driver imports
TensorFlow, and check the rest (model, data,
--out) before any model runs, stopping Ray again on bad input. An error is
one line on stderr and exit code 2, and nothing is written to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from typing import Any, Callable, Mapping, NoReturn, Sequence

from . import logs, options, output
from .errors import InvalidParameterError, Names, RnnimpError
from .worker import THREADS_PER_CPU

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; an RnnimpError becomes one line on stderr and its exit code (2: bad input)."""
    try:
        return main(argv)
    except RnnimpError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def exit_process(code: int) -> NoReturn:
    """End a job's process with exit ``code`` at once, without the interpreter's teardown.

    With TensorFlow, Keras and Ray loaded, Python's own exit (freeing every
    module, TensorFlow's destructors) takes one to several seconds after
    the results are written. A job calls this last, once its results are
    written and Ray is stopped: output is flushed and the process ends.
    If a Ray connection is still open (an error stopped the job before it
    stopped Ray), the normal exit runs instead, whose hook stops Ray.
    """
    import logging
    import os

    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: True)():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _OldSpelling(argparse.Action):
    """A former spelling of an option: does what the new one does, with a one-line note on stderr."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


class _SwitchNow(argparse.Action):
    """A switch whose catalogue entry acts at once, while the command line is parsed (``Spec.on_parse``).

    ``--verbose`` must reach the environment before TensorFlow is imported
    (the workers inherit it).
    """

    def __init__(self, option_strings, dest, on_parse: Callable[[], None], **kwargs) -> None:
        self.on_parse = on_parse
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.on_parse()
        setattr(namespace, self.dest, True)


def add_old_spellings(parser: argparse.ArgumentParser, action: argparse.Action, *old_flags: str) -> None:
    """Accept ``old_flags`` for ``action`` (hidden from --help), each use printing a deprecation note."""
    for old in old_flags:
        parser.add_argument(old, dest=action.dest, action=_OldSpelling, replacement=action.option_strings[0],
                            nargs=action.nargs, const=action.const, type=action.type, choices=action.choices,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_run_options(parser: argparse.ArgumentParser, job: str, out_default: str) -> None:
    """The run options ``job`` offers (method, statistics, execution, output), from the catalogue."""
    for option, spec in options.catalogue(job):
        default = out_default if option.name == "out" else option.default
        kwargs: dict[str, Any] = {"dest": option.name, "help": spec.help}
        if spec.on_parse is not None:
            kwargs.update(action=_SwitchNow, on_parse=spec.on_parse, default=option.default)
        elif isinstance(option.default, bool):
            kwargs.update(action="store_true")
        elif spec.repeatable:
            kwargs.update(action="append", default=[], metavar=spec.metavar)
        else:
            metavar = spec.metavar or (None if spec.choices else spec.flag.lstrip("-").replace("-", "_").upper())
            kwargs.update(default=default, type=spec.type, choices=spec.choices, metavar=metavar)
        action = parser.add_argument(spec.flag, **{k: v for k, v in kwargs.items() if v is not None})
        add_old_spellings(parser, action, *spec.old_flags)


def parameter_names(job: str, inputs: Mapping[str, str]) -> Names:
    """How errors of ``job`` name parameters: the flags of its options, ``inputs`` for the data
    (``{"X": "--data", "y": "--labels"}``)."""
    return Names({**{option.name: spec.flag for option, spec in options.catalogue(job)}, **inputs})


def options_from_args(args: argparse.Namespace, job: str, **resolved: Any) -> options.Options:
    """The API's Options from the parsed command line of ``job``.

    ``resolved``: values the job worked out itself (e.g. ``feature_names``
    from a Parquet file), used where the command line leaves an option unset.
    """
    values = dict(resolved)
    run_options = {option.name for option in dataclasses.fields(options.Options)}
    for option, spec in options.catalogue(job):
        if option.name not in run_options:
            continue
        value = getattr(args, option.name)
        if spec.parse is not None:
            value = spec.parse(value)
        if value is not None or option.name not in values:
            values[option.name] = value
    return options.Options(**values)


def execution_from_args(args: argparse.Namespace, job: str) -> options.Execution:
    """Where and how ``job`` runs, checked."""
    names = parameter_names(job, {})
    return options.Execution(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options.Execution)}
                             ).check(names)


def check_out(out: str, configuration: dict[str, Any], overwrite: bool) -> None:
    """Refuse an --out holding results or an unfinished run of another configuration.

    With ``overwrite`` those are removed instead. Called before any work.
    """
    from .checkpoint import Checkpoint, clear, differences

    try:
        filesystem, folder = output.resolve(out)
        info = filesystem.get_file_info(f"{folder}/{output.SUMMARY_FILE}")
        checkpoint = Checkpoint(out, {})
        has_checkpoint = checkpoint.exists()
    except (OSError, ValueError) as error:
        raise InvalidParameterError("--out", f"must be a reachable location ({error})", out) from None
    if overwrite:
        clear(out)
        return
    previous = None
    if has_checkpoint:
        previous = checkpoint.read_manifest()
    elif info.type.name != "NotFound":
        summary = f"{folder}/{output.SUMMARY_FILE}" if "://" not in out else out.rstrip("/") + "/" + output.SUMMARY_FILE
        try:
            previous = output.read_metadata(summary)
        except Exception as error:  # not Parquet, or no rnnimp metadata: pyarrow, OSError, KeyError, JSON
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise InvalidParameterError(
                "--out", f"holds an unreadable {output.SUMMARY_FILE} ({reason}); use --overwrite or another folder",
                out) from None
    if previous is None:
        return
    current = {"configuration": configuration["configuration"], "job": configuration["job"]}
    previous = {"configuration": previous.get("configuration", {}), "job": previous.get("job", {})}
    differing = differences(previous, current)
    if differing:
        what = "an unfinished run" if has_checkpoint else "results"
        raise InvalidParameterError(
            "--out", f"holds {what} of another configuration (differs in {', '.join(differing)}); "
            "use --overwrite or another folder", out)


class Workers:
    """A job's Ray connection and worker pool, started in a background thread.

    Connecting (an embedded Ray starts its processes, waiting for each) and
    starting the actors take seconds, mostly waiting; the thread does it
    while the driver imports TensorFlow and builds or loads the model and
    the data. :meth:`ready` waits for the start and re-raises its error (an
    unreachable ``RAY_ADDRESS``, a GPU share no node can grant) in the
    caller's thread. The thread then lives on until :meth:`stop`: Linux
    sends the embedded Ray's processes their parent-death signal
    (``PR_SET_PDEATHSIG``, Ray's fate sharing) when the *thread* that
    started them ends, not the process.

    With ``actors=False`` the thread only connects: the actors start when
    :func:`execute` warms them up (see :data:`SMALL_EVALUATION_STEPS`).

    ``started``: perf_counter when the job's clock started (before
    connecting); ``start_ray_s``: seconds the background start took
    (connect and start the actors, not wait for them to be live);
    ``wait_ray_s``: seconds the driver waited for it.
    """

    local = False  # whether the units run in this process (--executor local), not on Ray workers

    def __init__(self, execution: options.Execution, actors: bool = True) -> None:
        self.execution = execution
        self.actors = actors
        self.where = ""
        self.driver_threads = driver_threads(execution)  # TensorFlow's threads in the driver
        self.threads = THREADS_PER_CPU * self.driver_threads  # the driver lane's, or --executor local's
        self.started = time.perf_counter()
        self.start_ray_s = 0.0
        self.wait_ray_s = 0.0
        self._executor: Any = None
        self._connected = False  # until stop() disconnects
        self._error: BaseException | None = None
        self._done = threading.Event()  # the start finished (or failed)
        self._release = threading.Event()  # Ray is stopped: the thread may end
        self._thread = threading.Thread(target=self._start, name="rnnimp-ray", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        from . import distributed

        try:
            where = distributed.connect(self.execution.num_cpus, self.execution.connect_timeout)
            try:
                distributed.check_gpus(self.execution.gpus_per_worker, "--gpus-per-worker")
                executor = distributed.RayExecutor(gpus_per_worker=self.execution.gpus_per_worker,
                                                   driver_lane=not self.execution.workers_only,
                                                   driver_lanes=self.threads)
                if self.actors:
                    executor.start()
                self.where, self._executor, self._connected = where, executor, True
            except BaseException:
                distributed.shutdown()
                raise
        except BaseException as error:  # re-raised in the driver's thread by ready()
            self._error = error
        finally:
            self.start_ray_s = time.perf_counter() - self.started
            self._done.set()
        self._release.wait()  # keeps Ray's processes alive: they die with the thread that started them

    def ready(self) -> Any:
        """The started executor (waiting for the background start); raises what the start raised."""
        if not self._done.is_set():
            began = time.perf_counter()
            self._done.wait()
            self.wait_ray_s += time.perf_counter() - began
        if self._error is not None:
            raise self._error
        return self._executor

    def stop_in_background(self) -> Callable[[], float]:
        """Stop the workers now, then disconnect in a thread; returns a function that waits for it (the
        seconds both took, or the error).

        Only the disconnection (``ray.shutdown``: the embedded Ray's processes stop) overlaps the caller's
        work. Ray's core worker ends the whole process (exit status 1, nothing on stdout) when Python touches
        it *while* it shuts down, and dropping a reference to an object in Ray's store does: so the workers
        are killed, the executor's references dropped and Python's cyclic garbage (which may hold more)
        collected here, in the caller's thread, before the disconnection starts. The caller must not use
        Ray, nor drop object references, until the returned function has returned.
        """
        began = time.perf_counter()
        try:
            self._stop_executor()
        except BaseException:
            self.stop()
            raise
        stopped_s = time.perf_counter() - began
        outcome: dict[str, Any] = {}

        def disconnect() -> None:
            try:
                outcome["seconds"] = stopped_s + self.stop()
            except BaseException as error:
                outcome["error"] = error

        thread = threading.Thread(target=disconnect, name="rnnimp-stop-ray", daemon=True)
        thread.start()

        def wait() -> float:
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            return outcome["seconds"]

        return wait

    def _stop_executor(self) -> None:
        """Kill the workers and drop every object reference the job holds (after the background start)."""
        import gc

        self._done.wait()
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        if self._connected:
            gc.collect()  # object references in reference cycles, dropped while Ray can still take them

    def stop(self) -> float:
        """Stop the workers and disconnect (once the background start has finished); the seconds it took.

        Also hands what the driver compiled to XLA's persistent cache
        (:func:`rnnimp.xlacache.publish`): call once the driver compiles nothing more.
        """
        from . import xlacache

        began = time.perf_counter()
        try:
            self._stop_executor()
            if self._connected:
                from . import distributed

                self._connected = False
                distributed.shutdown()
        finally:
            self._release.set()
            self._thread.join()
            xlacache.publish()
        return time.perf_counter() - began


def start_workers(execution: options.Execution, actors: bool = True) -> Workers:
    """Connect to Ray and start the worker actors in the background; they import TensorFlow while the driver does.

    Called once the options that need no model are checked; returns at once.
    The workers compile a model once :func:`execute` knows its architecture;
    until they are live, the driver computes the run's units itself (the
    driver lane). A share of GPUs no node can grant is raised (after
    disconnecting) by :meth:`Workers.ready`. ``actors=False``: connect only,
    and let :func:`execute` start the actors (a job that trains its model
    first, see :data:`SMALL_EVALUATION_STEPS`).
    """
    logs.setup()
    _exit_on_sigterm()
    _set_tensorflow_environment(driver_threads(execution))
    if execution.executor == "local":
        return LocalWorkers(execution)
    # Ray is imported here: a second thread importing it beside TensorFlow could deadlock.
    from . import distributed  # noqa: F401

    return Workers(execution, actors)


class LocalWorkers(Workers):
    """``--executor local``: no Ray; :class:`rnnimp.worker.LocalExecutor` computes every unit in this process,
    on :data:`rnnimp.worker.THREADS_PER_CPU` threads per CPU of :func:`driver_threads`."""

    local = True

    def __init__(self, execution: options.Execution) -> None:
        super().__init__(execution, actors=False)
        cpus = self.driver_threads
        self.where = f"this process ({cpus} CPU{'s' * (cpus > 1)}, {self.threads} threads, no Ray)"

    def _start(self) -> None:
        from .worker import LocalExecutor

        self._executor = LocalExecutor(self.threads)
        self._done.set()


def driver_threads(execution: options.Execution) -> int:
    """The driver's TensorFlow threads: ``--num-cpus`` if given, else the CPUs it may use.

    The driver lane (and ``--executor local``) computes units on
    :data:`rnnimp.worker.THREADS_PER_CPU` threads per CPU while the workers
    start; TensorFlow runs concurrent XLA programs only with an intra-op
    pool of several threads. The training's result is the same bit for bit
    with 1 and 2 threads.
    """
    from .worker import available_cpus

    return min(execution.num_cpus or available_cpus(), available_cpus())


def _set_tensorflow_environment(threads: int) -> None:
    """Set now the variables ``configure_tensorflow(threads)`` will set before the driver imports TensorFlow,
    and XLA's persistent cache (:func:`rnnimp.xlacache.open_for_driver`).

    It then rewrites them with the same values while the Ray thread runs:
    a new variable reallocates the C environment, which a thread reading it
    meanwhile could trip on; an existing one is replaced in place.
    """
    import os

    from . import xlacache

    if not logs.verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    xlacache.open_for_driver()  # TF_XLA_FLAGS: the training and the driver lane load what earlier runs compiled


def _exit_on_sigterm() -> None:
    """SIGTERM (``ray job stop``, a scheduler) exits the driver through ``sys.exit``, so Ray's exit hook stops Ray.

    ``ray.init`` installs the same handler, but only when called from the
    main thread, and :class:`Workers` calls it from another.
    """
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def execute(execution: options.Execution, request: options.Request, job_configuration: dict[str, Any],
            obtain_model: Callable[[Callable[[], None]], tuple[Any, dict[str, Any]]], architecture_json: str,
            workers: Workers | None = None, loaded: bool = False) -> int:
    """Warm the workers up, obtain the model (train or load), run, write, report; stop the workers.

    ``workers``: from :func:`start_workers` (started here if None).
    ``obtain_model(on_built)`` returns the model and extra metadata (e.g.
    training losses); it runs on the driver while the workers compile the
    model. It may call ``on_built()`` once the model is built and before it
    trains: the driver lane then compiles its own forward pass in a thread
    meanwhile (:class:`DriverWarmUp`). ``loaded``: the model exists already
    (nothing will be built with seeded weights), so the driver lane compiles
    at once, while the driver waits for Ray.
    """
    from .modelio import model_to_bytes
    from .runner import run

    workers = start_workers(execution) if workers is None else workers
    driver = None if execution.workers_only else DriverWarmUp(architecture_json, request)
    if driver is not None and loaded:
        driver.start()  # while the driver waits for Ray; joined before it builds or traces anything itself
    try:
        executor = workers.ready()
        if driver is not None and loaded:
            driver.wait_compiled()
        if not workers.local:
            from . import distributed

            distributed.check_sizes(request.sample, request.labels, request.settings, architecture_json)
    except BaseException:
        if driver is not None:
            driver.join()
        workers.stop()
        raise
    timings: dict[str, float] = {} if workers.local else {"start_ray": workers.start_ray_s,
                                                          "wait_ray": workers.wait_ray_s}
    # A small evaluation after a training: the workers start once the model is trained (see SMALL_EVALUATION_STEPS).
    after_training = not loaded and not execution.workers_only and evaluation_steps(request) < SMALL_EVALUATION_STEPS

    def start_the_workers() -> None:
        if workers.local:
            print(f"rnnimp: running in {workers.where}; results go to {execution.out}", flush=True)
            return
        executor.warm_up(architecture_json, request.settings.layout.batch_size, request.inputs.shapes)
        gpus = f" ({execution.gpus_per_worker:g} GPU each)" if execution.gpus_per_worker else ""
        print(f"rnnimp: running on {workers.where} with {len(executor.actors)} workers{gpus}; results go to "
              f"{execution.out}", flush=True)

    if not after_training:
        start_the_workers()
    stopping: Callable[[], float] | None = None
    try:
        started = time.perf_counter()
        model, model_metadata = obtain_model(driver.start if driver is not None else lambda: None)
        timings[model_metadata.pop("phase", "load_model")] = time.perf_counter() - started
        if after_training:
            start_the_workers()
        if driver is not None:
            driver.start()  # if obtain_model did not (a loaded model): compiles now, under the output filter
            driver.wait_compiled()
        result = run(model, request, executor=executor, progress=not execution.quiet, checkpoint=execution.out,
                     metadata={"job": job_configuration, **model_metadata, "timings_s": timings})
        if result.metadata["units_from_checkpoint"]:
            print(f"rnnimp: resumed: {result.metadata['units_from_checkpoint']} of "
                  f"{result.metadata['n_units']} units came from the checkpoint in {execution.out}", flush=True)
        if driver is not None:
            driver.join()
        stopping = workers.stop_in_background()  # Ray is done with: it stops while the driver writes
        started = time.perf_counter()
        paths = result.write(execution.out, model_bytes=model_to_bytes(model))
        write_s = time.perf_counter() - started
    finally:
        if driver is not None:
            driver.join()  # a compilation still writing its cache entry, before stop() publishes it
        stop_s = stopping() if stopping is not None else workers.stop()
    print()
    print(result.format_summary())
    print()
    print(format_phases({**result.metadata["timings_s"], "shutdown": stop_s}, write_s,
                        time.perf_counter() - workers.started))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


SMALL_EVALUATION_STEPS = 20_000_000
"""Below this many sample-steps of forward passes (:func:`evaluation_steps`), a job that trains its model
starts its worker actors only once the model is trained, not while it trains.

A worker takes seconds of CPU to start (Python, Ray, TensorFlow, the
compilation); started beside the training, the workers slow it down on a
machine with few cores. An evaluation this small (the reference model's
forward pass runs about 9 M sample-steps a second on one thread) the driver
lane computes in about the time a worker takes to start, so starting them
early would buy little; a larger one gets its workers at once.
"""


def evaluation_steps(request: options.Request) -> int:
    """Sample-steps of forward passes the run computes at most: the baseline, and every (target, step, repeat)
    over the whole sample (up to ``max_repeats`` with adaptive repeats)."""
    repeats = request.options.max_repeats or request.options.n_repeats
    passes = 1 + repeats * sum(len(steps) for steps in request.steps)
    time_steps = max((shape[0] for shape in request.inputs.shapes if len(shape) == 2), default=1)
    return request.settings.layout.n_samples * time_steps * passes


class DriverWarmUp:
    """The driver lane's forward pass, built and compiled in a thread while the driver trains the model
    (then the imports the run's end needs, :func:`preload`).

    The driver lane computes units while the workers start; the first one
    would compile the forward pass first (seconds), after training. This
    compiles it beside the training instead, into the same per-process
    cache the lane then uses (:func:`rnnimp.worker.warm_up`: the
    architecture and batch shapes, weights set later). While it runs, the
    driver's own thread must build and trace nothing (see
    ``reference.train_model``'s ``on_built``): building a Keras model
    draws its initial weights' seeds from Python's global ``random``,
    which the training model's seeded build must have to itself, and
    TensorFlow numbers functions in the order they are traced, which keys
    XLA's persistent cache. :meth:`join` before the run, so that the lane
    never compiles the same program twice (:meth:`wait_compiled`, which
    leaves the imports to finish beside the run); a warm-up that failed is
    left to the lane, which compiles again and raises the error.
    """

    def __init__(self, architecture_json: str, request: options.Request) -> None:
        self.arguments = (architecture_json, request.settings.layout.batch_size, request.inputs.shapes,
                          request.settings.jit_compile)
        self.thread: threading.Thread | None = None
        self.compiled = threading.Event()  # the forward pass is compiled (or its compilation failed)

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._compile, name="rnnimp-driver-warm-up", daemon=True)
            self.thread.start()

    def _compile(self) -> None:
        from .worker import warm_up

        try:
            with logs.filtered_stderr(not logs.verbose()):  # XLA's notes on a program loaded from its cache
                warm_up(*self.arguments)
        except Exception:  # the driver lane compiles again and reports it
            pass
        finally:
            self.compiled.set()
        preload()  # while the run starts: its end needs them

    def wait_compiled(self) -> None:
        """Wait for the compilation (not the imports after it); before the run, which must not compile it again."""
        if self.thread is not None:
            self.compiled.wait()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def preload() -> None:
    """Import what the end of a run needs (scipy's statistics and special functions, matplotlib for the chart).

    About a CPU-second of imports, done here (in :class:`DriverWarmUp`'s
    thread, while the driver trains) rather than on the driver's path after
    the units. An import that fails is left to the code that needs it.
    """
    for module in ("scipy.special", "scipy.stats", "rnnimp.plots"):
        try:
            __import__(module)
        except Exception:
            pass


def format_phases(timings: dict[str, float], write_s: float, total_s: float) -> str:
    """One line of wall times per phase, with the fixed overhead (all but training and units)."""
    order = ["start_ray", "wait_ray", "train", "load_model", "wait_workers", "broadcast", "baseline", "units"]
    phases = {name: timings[name] for name in order if name in timings}
    phases["write"] = write_s
    if "shutdown" in timings:
        phases["shutdown"] = timings["shutdown"]
    overhead = total_s - phases.get("train", 0.0) - phases.get("units", 0.0)
    listed = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
    return f"phases: {listed}; total {total_s:.2f} s, fixed overhead {overhead:.2f} s"
