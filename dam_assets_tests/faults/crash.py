"""Subprocess entry points that SIGKILL themselves at a chosen step.

    python -m dam_assets_tests.faults.crash tick  DAGSTER_HOME STEP [CURSOR]
    python -m dam_assets_tests.faults.crash run   DAGSTER_HOME BATCH KEY_PREFIX NTH
    python -m dam_assets_tests.faults.crash put   STORE_ROOT KEY TOTAL_MIB KILL_AFTER_MIB [create]
    python -m dam_assets_tests.faults.crash publish QUEUE_DIR QUEUE_NAME COUNT

Settings come from the environment, as for every dam process. The kill is SIGKILL on
itself: no finally blocks, no atexit, no flushing of anything but what is already written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime

from dam_core import queue as q
from dam_core.messages import UploadMessage
from dam_core.queue import EmbeddedQueue
from dam_core.store import LocalStore, S3Store


def die(reason: str) -> None:
    print(f"KILL {reason}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


STORES = (LocalStore, S3Store)


def tick(home: str, step: str, cursor: str | None) -> None:
    """One upload-sensor evaluation, killed before the manifest, before the ack, or before
    the daemon would store its partitions (after the tick function returned)."""
    if step == "before_manifest":
        for cls in STORES:
            original = cls.create

            def create(self, key, data, content_type=None, _original=original):
                if key.startswith("batches/"):
                    die("before the manifest was written")
                return _original(self, key, data, content_type)

            cls.create = create
    elif step == "before_ack":
        for cls in (q._RabbitConsumer, q._EmbeddedConsumer):

            def ack(self, deliveries):
                die(f"after the manifest, before acking {len(deliveries)} message(s)")

            cls.ack = ack
    elif step not in ("before_partition", "none"):
        raise SystemExit(f"unknown step {step}")

    # dagster and the code location only in the entry points that run them: `put` and `publish` start fast.
    from dagster import DagsterInstance, build_sensor_context

    from dam_assets.ingest.partitions import batches_partitions_def
    from dam_assets.ingest.sensors import upload_queue_sensor
    from dam_assets_tests.pipeline_harness import resources

    instance = DagsterInstance.local_temp(tempdir=home)
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources=resources())
    result = upload_queue_sensor(ctx)
    print(
        json.dumps({"runs": [r.partition_key for r in result.run_requests or []], "cursor": result.cursor}), flush=True
    )
    if step == "before_partition":
        die("after the tick returned, before its partitions were stored")
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(batches_partitions_def.name, list(req.partition_keys))


def run(home: str, batch: str, prefix: str, nth: int) -> None:
    """Materialize one batch, killed right after the nth object under `prefix` was written."""
    seen = {"n": 0}
    for cls in STORES:
        original = cls.put

        def put(self, key, data, content_type=None, _original=original):
            _original(self, key, data, content_type)
            if key.startswith(prefix):
                seen["n"] += 1
                if seen["n"] >= nth:
                    die(f"after writing {key}")

        cls.put = put

    from dagster import DagsterInstance  # lazily, as in tick

    from dam_assets_tests.pipeline_harness import materialize_batch

    instance = DagsterInstance.local_temp(tempdir=home)
    materialize_batch(instance, batch)
    print("DONE", flush=True)


class _Endless:
    """A readable stream of `total` bytes that kills the process after `kill_after` bytes."""

    def __init__(self, total: int, kill_after: int):
        self.total, self.kill_after, self.pos = total, kill_after, 0

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.kill_after:
            die(f"mid-write after {self.pos} bytes")
        n = min(n if n and n > 0 else 1 << 20, self.total - self.pos)
        chunk = bytes([(self.pos >> 20) & 0xFF]) * n
        self.pos += n
        return chunk


def put(root: str, key: str, total_mib: int, kill_after_mib: int, mode: str = "put") -> None:
    store = LocalStore(root)
    data = _Endless(total_mib << 20, kill_after_mib << 20)
    if mode == "create":
        store.create(key, data)
    else:
        store.put(key, data)
    print("DONE", flush=True)


def publish(directory: str, name: str, count: int) -> None:
    """Publish `count` messages, printing each index once publish() returned (the confirm)."""
    queue = EmbeddedQueue(directory, name)
    for i in range(count):
        queue.publish(message(i))
        print(i, flush=True)
    print("DONE", flush=True)


def message(i: int) -> bytes:
    asset_id = f"{i:032x}"
    return UploadMessage(
        id=asset_id,
        filename=f"burst-{i}.jpg",
        r2_key=f"assets/{asset_id}.jpg",
        mime_type="image/jpeg",
        bytes=1000 + i,
        sha256="a" * 64,
        width=10,
        height=10,
        uploaded_at=datetime.now(UTC),
    ).to_json()


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "tick":
        tick(args[0], args[1], args[2] if len(args) > 2 and args[2] else None)
    elif cmd == "run":
        run(args[0], args[1], args[2], int(args[3]))
    elif cmd == "put":
        put(args[0], args[1], int(args[2]), int(args[3]), *(args[4:5]))
    elif cmd == "publish":
        publish(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
