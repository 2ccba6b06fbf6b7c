"""A run launcher whose run workers can be health-checked, so dead runs fail and retry by themselves.

Dagster's DefaultRunLauncher (what `dagster dev` and our daemon use) starts each run as a
subprocess of the code server, but it does not support `check_run_worker_health`. Run
monitoring then skips every STARTED run: when the whole process tree is killed (a crash, an
OOM kill, a SIGKILL of `dagster dev`), the run stays STARTED forever, `run_retries` never
fires because no RUN_FAILURE is ever written, and with `max_concurrent_runs` the zombie holds
the run queue, so every later batch waits behind it.

This launcher launches exactly as the default one does and adds the one thing monitoring
needs: a health check. The worker writes "Started process for run (pid: N)" to the event log
when it starts; the launcher tags the run with where its code server starts the worker (host
name, PID namespace, boot time). Judged from the same host by the monitoring daemon: a worker
whose pid is gone, is a zombie, or now names a process created after the worker announced
itself is dead; so is every worker of an earlier boot or of another PID namespace on this host
(a restarted container: its processes all died with it; Dagster runs one daemon per instance,
so no live launcher is left there). FAILED makes Dagster's own monitoring fail the run, and
`run_retries` re-executes it. What it cannot judge (another host, a remote code server, no pid
yet) is reported RUNNING, because monitoring fails every status other than RUNNING/SUCCESS and
a healthy run must never be failed on a guess.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

import psutil
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._serdes import ConfigurableClassData

HOST_TAG = "dam/worker_host"
PID_NAMESPACE_TAG = "dam/worker_pid_namespace"
BOOT_TAG = "dam/worker_boot_time"

STARTED_PROCESS_PREFIX = "Started process for run (pid: "
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# psutil derives create_time from the kernel's boot time in whole seconds: allow that much, and more.
CREATE_TIME_SLACK_SECONDS = 2.0


def pid_namespace() -> str:
    """Pids name the same process only within one PID namespace (a container has its own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _code_server_is_local(run: DagsterRun) -> bool:
    try:
        info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    except ValueError:
        return False
    return bool(info.get("socket")) or info.get("host") in LOOPBACK_HOSTS


class HealthCheckedRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher plus a pid-based worker health check for runs started on this machine."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        super().__init__(inst_data=inst_data)
        self._host = socket.gethostname()
        self._pid_namespace = pid_namespace()

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        # Tagged before the launch, so a worker that dies at once is still judged.
        self._instance.add_run_tags(
            context.dagster_run.run_id,
            {HOST_TAG: self._host, PID_NAMESPACE_TAG: self._pid_namespace, BOOT_TAG: str(int(psutil.boot_time()))},
        )
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _worker_pid(self, run_id: str) -> tuple[int, float] | None:
        """The worker's pid and when it announced itself, from the worker's own engine event."""
        events = self._instance.event_log_storage.get_logs_for_run(
            run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False
        )
        for entry in events:
            event = entry.dagster_event
            if event is None or not (event.message or "").startswith(STARTED_PROCESS_PREFIX):
                continue
            pid = event.engine_event_data.metadata.get("pid")
            if pid is None:
                continue
            return int(str(pid.value)), entry.timestamp  # text: EngineEventData.in_process
        return None

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        host = run.tags.get(HOST_TAG)
        if host != self._host or not _code_server_is_local(run):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"worker on {host or 'an unrecorded host'}, or a remote code server: not judged"
            )
        boot = run.tags.get(BOOT_TAG)
        if boot and abs(float(boot) - psutil.boot_time()) > CREATE_TIME_SLACK_SECONDS:
            return CheckRunHealthResult(WorkerStatus.FAILED, "run worker is gone: the machine restarted since")
        if run.tags.get(PID_NAMESPACE_TAG, self._pid_namespace) != self._pid_namespace:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, "run worker is gone: its PID namespace (container) was restarted since"
            )
        found = self._worker_pid(run.run_id)
        if found is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "worker has not reported its pid yet")
        pid, announced_at = found
        try:
            proc = psutil.Process(pid)
            status, created = proc.status(), proc.create_time()
        except psutil.NoSuchProcess:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker (pid {pid}) is gone", run_worker_id=str(pid))
        except psutil.AccessDenied:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker (pid {pid}) exists", run_worker_id=str(pid))
        if status == psutil.STATUS_ZOMBIE:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"run worker (pid {pid}) is gone (exited, not reaped)", run_worker_id=str(pid)
            )
        if created > announced_at + CREATE_TIME_SLACK_SECONDS:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"run worker (pid {pid}) is gone; the pid now belongs to a newer process",
                run_worker_id=str(pid),
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        found = self._worker_pid(run.run_id)
        where = run.tags.get(HOST_TAG, "an unrecorded host")
        return f"run worker pid {found[0]} on {where}" if found else None
