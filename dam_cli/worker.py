"""`dam worker`: a Celery worker that executes production runs (dagster.prod.yaml), models kept warm.

The worker reads the instance in $DAGSTER_HOME; its run launcher (dam_assets/celery_launcher.py)
names the broker, the result backend and the queues, so workers and the daemon cannot disagree.
Each pool process executes one run at a time and keeps BLIP and CLIP loaded between runs (the
per-process cache in dam_models/loading.py); each pool process loads its own copy, so a model
worker runs `--concurrency 1` and scales by more workers, not more processes.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
import uuid

log = logging.getLogger("dam.worker")


def _launcher_or_exit():
    # Dagster and Celery load when the command runs, not for `dam --help`; and only after
    # cmd_worker has set the metrics variable that prometheus_client reads when imported.
    from dagster import DagsterInstance

    from dam_assets.celery_launcher import DamCeleryRunLauncher

    try:
        with DagsterInstance.get() as instance:
            launcher = instance.run_launcher
    except Exception as err:
        print(f"dam worker: cannot load the Dagster instance ($DAGSTER_HOME): {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if not isinstance(launcher, DamCeleryRunLauncher):
        print(
            "dam worker: the instance in $DAGSTER_HOME does not launch runs on Celery "
            f"({type(launcher).__name__}); use dagster.prod.yaml as its dagster.yaml",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return launcher


def _queues_or_exit(launcher, wanted: list[str] | None) -> list[str]:
    unknown = sorted(set(wanted or ()) - set(launcher.queues))
    if unknown:
        print(
            f"dam worker: unknown queue(s) {', '.join(unknown)}; the instance defines {', '.join(launcher.queues)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return list(wanted or launcher.queues)


def _preload(**_) -> None:
    # Runs in each pool process as it starts, not before the fork: CUDA cannot cross a fork.
    # Imported here for the same reason: torch and the models load in the pool process only.
    from dam_assets import metrics
    from dam_assets.config import SETTINGS
    from dam_assets.resources import ModelsResource
    from dam_models.loading import track_loads

    started = time.perf_counter()
    try:
        models = ModelsResource.from_settings(SETTINGS)
        for name, load_model in (("caption", models.captioner), ("embedding", models.embedder)):
            with track_loads() as load:
                load_model()
            metrics.model_loaded(name, load.seconds, load.loads)
    except Exception:  # the run that needs the model reports the error where it is seen
        log.exception("dam worker: preloading the models failed; runs will load them")
        return
    log.warning("dam worker: models preloaded in %.1f s", time.perf_counter() - started)


def ping(launcher, queues: list[str] | None, timeout: float, any_host: bool) -> int:
    """Exit status for orchestrators: 0 when a worker (on this host, serving `queues`) answers Celery."""
    try:
        replies = launcher.celery.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as err:  # broker unreachable
        print(f"dam worker --ping: {err}", file=sys.stderr)
        return 1
    host = socket.gethostname()
    need = {launcher.physical_queue(q) for q in queues or ()}
    alive = {
        node: sorted(q["name"] for q in served)
        for node, served in replies.items()
        if (any_host or node.endswith("@" + host)) and need <= {q["name"] for q in served}
    }
    for node, served in sorted(alive.items()):
        print(f"{node}: {', '.join(served)}")
    if not alive:
        where = "" if any_host else f" on {host}"
        print(f"dam worker --ping: no worker{where} answered within {timeout:g} s", file=sys.stderr)
    return 0 if alive else 1


def _process_gone(pid=None, **_) -> None:
    # In the pool process that exits: its live gauges leave the sum (its counters stay).
    from dam_core.metrics import mark_process_dead  # tempfile and random: not for `dam --help`

    mark_process_dead(pid)


def _serve_metrics(host: str, port: int) -> None:
    """Every pool process's metrics (dam_assets/metrics.py), summed, on http://host:port/metrics."""
    # Imported here: prometheus_client must see the variable cmd_worker sets; Celery is not for `dam --help`.
    from celery.signals import worker_process_shutdown
    from prometheus_client import start_http_server

    from dam_core.metrics import scrape_registry

    try:
        start_http_server(port, addr=host, registry=scrape_registry())
    except OSError as err:
        print(f"dam worker: cannot serve metrics on {host}:{port}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    worker_process_shutdown.connect(_process_gone, weak=False)


def cmd_worker(args) -> int:
    if args.metrics_port is None or args.ping:
        return _work(args)
    from dam_core.metrics import use_multiprocess_dir  # tempfile and random: not for `dam --help`

    # Set before the instance (and with it prometheus_client) is imported: the pool processes,
    # forked later, then write their metrics to files the main process serves.
    with use_multiprocess_dir():
        return _work(args)


def _work(args) -> int:
    launcher = _launcher_or_exit()
    queues = _queues_or_exit(launcher, args.queue)
    if args.ping:
        return ping(launcher, args.queue, args.timeout, args.any_host)
    if args.metrics_port is not None:
        _serve_metrics(args.metrics_host, args.metrics_port)
    app = launcher.celery
    if args.preload:
        from celery.signals import worker_process_init  # Celery: not for `dam --help`

        worker_process_init.connect(_preload, weak=False)
        # Celery kills a pool process that is not ready within this; loading models takes longer.
        app.conf.worker_proc_alive_timeout = 900
    # A fresh node name per start: a restarted worker is never taken for the dead one it replaces.
    node = f"{args.name or 'dam'}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    argv = [
        "worker",
        "--queues",
        ",".join(launcher.physical_queue(q) for q in queues),
        "--concurrency",
        str(args.concurrency),
        "--pool",
        "prefork",
        "--hostname",
        node,
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def register(sub) -> None:
    s = sub.add_parser("worker", help="execute production runs from RabbitMQ (Celery), models kept loaded")
    s.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="a queue to serve (dam-models, dam-light); repeat for more; default: every queue of the instance",
    )
    s.add_argument(
        "--concurrency", type=int, default=1, help="runs at once; each process loads its own models (default 1)"
    )
    s.add_argument(
        "--preload", action="store_true", help="load BLIP and CLIP when the worker starts, not in its first run"
    )
    s.add_argument("--name", default=None, help="node name prefix (default: dam); a unique suffix and @host are added")
    s.add_argument("--loglevel", default="INFO")
    s.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics of every pool process on this port (docs/metrics.md); default: none",
    )
    s.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of --metrics-port (default 127.0.0.1; it has no auth: widen it only on a trusted network)",
    )
    s.add_argument(
        "--ping",
        action="store_true",
        help="health check: exit 0 when a worker on this host (serving --queue, if given) answers, else 1",
    )
    s.add_argument("--any-host", action="store_true", help="with --ping: a worker on any host will do")
    s.add_argument("--timeout", type=float, default=5.0, help="with --ping: seconds to wait for answers")
    s.set_defaults(func=cmd_worker)
