"""Production runs on Celery workers (dagster-celery) that recover by themselves when a worker dies.

`DamCeleryRunLauncher` is dagster-celery's `CeleryRunLauncher` with three changes:

* **Queues and settings that lose no run.** One topic queue per configured name (`dam-models`,
  `dam-light`; a run picks one with the `dagster-celery/queue` tag, see dam_assets/run_queues.py),
  late acknowledgement, re-queue when the worker process is lost, a prefetch of one, publisher
  confirms, and a result backend that survives a restart (Celery's database backend on the
  instance's PostgreSQL). Stock dagster-celery declares only its `dagster` queue, and a message
  routed to another queue name with its `<queue>.execute_job` routing key matches no binding.
* **A redelivered run does not pass for a finished one.** With late acks, a worker killed mid-run
  gets its task redelivered to another worker. Stock dagster-celery then finds the run STARTED,
  Dagster skips it as a duplicate ("run monitoring will handle it"), the task reports SUCCESS,
  and monitoring, asking Celery, hears SUCCESS: the run stays STARTED forever. Here the task
  records which worker process holds the run (run tags); a redelivered task that finds the run
  STARTED asks Celery whether that process still runs it, and if not, fails the run
  (RUN_WORKER_RESTART) so `run_retries` re-executes it at once.
* **A health check that asks the worker, not only the result backend.** For a STARTED task,
  the worker named in the backend must answer Celery's `inspect active` and still list the task
  in the same process; one that does not answer (machine gone, process group killed) or lost the
  task (its pool process died) fails the run. This covers a dead worker whose task nobody picks
  up (no other worker on its queue). A task that ended while its run did not is a failure too.

`max_runtime` stays the last resort for a worker that is alive but hung.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster._check as check
from celery import Celery
from celery.exceptions import Ignore
from celery.states import READY_STATES, STARTED
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Field,
    Noneable,
    Permissive,
    StringSource,
)
from dagster._cli.api import _execute_run_command_body, _resume_run_command_body
from dagster._core.events import EngineEventData, JobFailureData, RunFailureReason
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    WorkerStatus,
)
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import ConfigurableClassData, pack_value, unpack_value
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG
from kombu import Exchange, Queue

from dam_assets import metrics
from dam_assets.run_queues import MODELS_QUEUE, QUEUE_TAG, QUEUES

EXECUTE_TASK = "dam.execute_run"
RESUME_TASK = "dam.resume_run"
# Where the run executes: the Celery node (unique per worker start) and its pool process.
WORKER_TAG = "dam/celery_worker"
WORKER_PID_TAG = "dam/celery_worker_pid"

CELERY_DEFAULTS: dict[str, Any] = {
    # A message is acknowledged only when its run worker returns; a lost pool process re-queues it.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One run at a time per pool process, none reserved behind it on a busy worker.
    "worker_prefetch_multiplier": 1,
    "task_track_started": True,
    "result_extended": True,
    "result_backend_always_retry": True,
    "database_engine_options": {"pool_pre_ping": True},
    "broker_connection_retry_on_startup": True,
    # The launch returns only once RabbitMQ has the message.
    "broker_transport_options": {"confirm_publish": True},
    "task_queue_max_priority": 10,
    "task_default_priority": 5,
    "worker_hijack_root_logger": False,
}


_OUTCOMES = {
    DagsterRunStatus.SUCCESS: "success",
    DagsterRunStatus.FAILURE: "failure",
    DagsterRunStatus.CANCELED: "canceled",
    DagsterRunStatus.CANCELING: "canceled",
}


def _count_outcome(instance: DagsterInstance, run_id: str) -> None:
    """dam_runs_total: the status the run ended with here (a run still STARTED after its body: a failure)."""
    try:
        ended = instance.get_run_by_id(run_id)
    except Exception:  # the run storage is unreachable: the run's own failure says more than this
        ended = None
    metrics.run_finished(_OUTCOMES.get(ended.status, "failure") if ended else "failure")


def holds_task(app: Celery, node: str | None, task_id: str, pid: Any, timeout: float) -> bool | None:
    """Whether Celery node `node` still runs `task_id` in pool process `pid`; None when it does not answer."""
    if not node:
        return None
    replies = app.control.inspect(destination=[node], timeout=timeout, limit=1).active() or {}
    tasks = replies.get(node)
    if tasks is None:
        return None
    return any(t.get("id") == task_id and (pid is None or str(t.get("worker_pid")) == str(pid)) for t in tasks)


def _register_tasks(app: Celery, health_timeout: float) -> None:
    def run_worker(task, packed, args_type, body) -> int:
        args = unpack_value(packed, as_type=args_type)
        resuming = args_type is ResumeRunArgs  # a resume finds its run STARTED by design
        with DagsterInstance.get() as instance:
            run = instance.get_run_by_id(args.run_id)
            if run is None:
                return 0
            if run.status == DagsterRunStatus.STARTED and not resuming:
                _take_over_or_fail(task, instance, run, health_timeout)
                return 0
            executes = resuming or run.status in (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING)
            if executes:
                tags = {WORKER_TAG: task.request.hostname, WORKER_PID_TAG: str(os.getpid())}
                instance.add_run_tags(run.run_id, tags)
            try:
                return body(
                    instance=instance,
                    run_id=run.run_id,
                    write_stream_fn=lambda _event: None,
                    set_exit_code_on_failure=args.set_exit_code_on_failure is not False,
                )
            finally:
                if executes:  # not a stale redelivery of a run that already ended
                    _count_outcome(instance, run.run_id)

    @app.task(bind=True, name=EXECUTE_TASK, track_started=True)
    def execute_run(self, execute_job_args_packed):
        return run_worker(self, execute_job_args_packed, ExecuteRunArgs, _execute_run_command_body)

    @app.task(bind=True, name=RESUME_TASK, track_started=True)
    def resume_run(self, execute_job_args_packed):
        return run_worker(self, execute_job_args_packed, ResumeRunArgs, _resume_run_command_body)


def _take_over_or_fail(task, instance: DagsterInstance, run: DagsterRun, health_timeout: float) -> None:
    """This run's task was delivered again while the run is STARTED: fail the run unless its holder lives."""
    node, pid = run.tags.get(WORKER_TAG), run.tags.get(WORKER_PID_TAG)
    me = (task.request.hostname, str(os.getpid()))
    alive = (node, pid) != me and holds_task(task.app, node, task.request.id, pid, health_timeout)
    if alive:
        # The broker gave up on a live holder (a network blip): leave the run to it, and put its
        # name back in the result backend, which this delivery overwrote when it started.
        # No pid tag (never so: run_worker writes both tags) stores no pid instead of failing here.
        held_by = {"pid": None if pid is None else int(pid), "hostname": node}
        task.backend.store_result(task.request.id, held_by, STARTED, request=task.request)
        instance.report_engine_event(f"Celery redelivered the run's task to {me[0]}; {node} still runs it", run)
        raise Ignore()
    msg = (
        f"Run worker pid {pid} on Celery node {node} is gone: the run's task came back to {me[0]} "
        "(the worker died or lost its pool process mid-run). Failing the run so run_retries re-executes it."
    )
    instance.report_engine_event(msg, run, EngineEventData({"dead worker": f"{node} pid {pid}"}))
    instance.report_run_failed(run, msg, JobFailureData(error=None, failure_reason=RunFailureReason.RUN_WORKER_RESTART))
    metrics.run_finished("worker_lost")


class DamCeleryRunLauncher(CeleryRunLauncher):
    """CeleryRunLauncher with dam's queues, no-loss Celery settings and a dead-worker-aware health check."""

    def __init__(
        self,
        broker: str | None = None,
        backend: str | None = None,
        database_backend_url: str | None = None,
        queues: list[str] | None = None,
        default_queue: str = MODELS_QUEUE,
        queue_prefix: str = "",
        health_timeout_seconds: float = 5.0,
        include: list[str] | None = None,
        config_source: Mapping[str, Any] | None = None,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        # Not CeleryRunLauncher.__init__ (its app declares only the `dagster` queue): the one after it,
        # RunLauncher's.
        super(CeleryRunLauncher, self).__init__()
        self._inst_data = inst_data
        self.broker = broker or os.environ.get("AMQP_URL") or None
        if database_backend_url:
            backend = "db+" + database_backend_url.removeprefix("db+")
        self.backend = backend or "rpc://"
        self.include = list(include or [])
        self.queue_prefix = queue_prefix or ""
        self.queues = list(queues or QUEUES)
        if default_queue not in self.queues:
            raise ValueError(f"default_queue {default_queue!r} is not one of queues {self.queues}")
        self.default_queue = default_queue
        self.health_timeout_seconds = float(health_timeout_seconds)
        self.config_source = {**CELERY_DEFAULTS, **dict(config_source or {})}
        self.celery = self._make_app()

    def physical_queue(self, name: str) -> str:
        return f"{self.queue_prefix}{name}"

    def _make_app(self) -> Celery:
        app = Celery("dam", broker=self.broker, backend=self.backend, include=self.include)
        app.conf.update(self.config_source)
        app.conf.task_queues = [
            Queue(q, Exchange(q, type="topic"), routing_key=f"{q}.#", queue_arguments={"x-max-priority": 10})
            for q in map(self.physical_queue, self.queues)
        ]
        app.conf.task_default_queue = self.physical_queue(self.default_queue)
        app.conf.task_create_missing_queues = False
        _register_tasks(app, self.health_timeout_seconds)
        return app

    # ----------------------------------------------------------------------------- launching

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        args = ExecuteRunArgs(
            job_origin=check.not_none(run.job_code_origin),
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        self._send(run, EXECUTE_TASK, args)

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        args = ResumeRunArgs(
            job_origin=check.not_none(run.job_code_origin),
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        self._send(run, RESUME_TASK, args)

    def _send(self, run: DagsterRun, task_name: str, args) -> None:
        name = run.tags.get(QUEUE_TAG, self.default_queue)
        if name not in self.queues:
            raise ValueError(f"run tag {QUEUE_TAG}={name!r} names no configured queue ({', '.join(self.queues)})")
        queue = self.physical_queue(name)
        try:
            priority = int(run.tags.get("dagster-celery/run_priority", 0))
        except ValueError:
            priority = 0
        result = self.celery.send_task(
            task_name,
            kwargs={"execute_job_args_packed": pack_value(args)},
            queue=queue,
            routing_key=f"{queue}.{task_name}",
            priority=priority,
        )
        self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: result.task_id})
        self._instance.report_engine_event(
            f"Run sent to Celery queue {queue}",
            run,
            EngineEventData({"Celery Task ID": result.task_id, "Celery Queue": queue}),
            cls=self.__class__,
        )

    # ----------------------------------------------------------------------------- health

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no Celery task recorded yet")
        result = self.celery.AsyncResult(task_id)
        state = result.state
        if state == STARTED:
            info = result.info if isinstance(result.info, dict) else {}
            node, pid = info.get("hostname"), info.get("pid")
            held = holds_task(self.celery, node, task_id, pid, self.health_timeout_seconds)
            if held:
                return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=f"{node} pid {pid}")
            if self.celery.AsyncResult(task_id).state != STARTED:
                return CheckRunHealthResult(WorkerStatus.RUNNING, "the Celery task just changed state")
            why = "does not answer" if held is None else f"answers but no longer runs the task in pid {pid}"
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"Celery worker {node} {why}: the run worker is gone",
                run_worker_id=f"{node} pid {pid}",
            )
        if state in READY_STATES:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the Celery task ended ({state}) but the run did not")
        # PENDING/RECEIVED/RETRY for a STARTED run: not a state a live run worker leaves behind.
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Celery task state {state}")

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        return f"Celery node {run.tags.get(WORKER_TAG)} pid {run.tags.get(WORKER_PID_TAG)}, task {run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)}"

    # ----------------------------------------------------------------------------- config

    @classmethod
    def config_type(cls):
        return {
            "broker": Field(
                Noneable(StringSource),
                is_required=False,
                description="Celery broker URL; default: AMQP_URL (the RabbitMQ of the uploads).",
            ),
            "backend": Field(Noneable(StringSource), is_required=False, description="Celery result backend URL."),
            "database_backend_url": Field(
                Noneable(StringSource),
                is_required=False,
                description="SQLAlchemy URL for Celery's database result backend (overrides `backend`).",
            ),
            "queues": Field([str], is_required=False, description="Logical queue names runs may be routed to."),
            "default_queue": Field(str, is_required=False, default_value=MODELS_QUEUE),
            "queue_prefix": Field(
                StringSource,
                is_required=False,
                default_value="",
                description="Prefix of every physical queue name (separate deployments on one vhost).",
            ),
            "health_timeout_seconds": Field(float, is_required=False, default_value=5.0),
            "include": Field([str], is_required=False),
            "config_source": Field(Noneable(Permissive()), is_required=False, description="More Celery settings."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)
