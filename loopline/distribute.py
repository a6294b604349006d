"""The `distribute` param: one tf.distribute strategy per choice, and what they need.

The training loop (loop.py) runs unchanged under each: `none` (the default strategy),
`mirrored` (all local GPUs, or the CPU split in two logical devices) and `multi_worker`
(one process per machine, described by TF_CONFIG).
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from loopline.params import dispatch_table


def _mirrored_strategy() -> tf.distribute.Strategy:
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    # No GPU: split the CPU into two logical devices, so the strategy runs (and is tested)
    # here. This must happen before TensorFlow initialises its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _multi_worker_strategy() -> tf.distribute.Strategy:
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "params.yaml: distribute: multi_worker needs the TF_CONFIG environment variable "
            "(cluster and task); see docs/scale.md"
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG: not valid JSON ({error}); see docs/scale.md") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


# The `distribute` param's choices (params.STRATEGIES) and what each one makes.
STRATEGIES = dispatch_table(
    "distribute",
    none=tf.distribute.get_strategy,
    mirrored=_mirrored_strategy,
    multi_worker=_multi_worker_strategy,
)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for the `distribute` param."""
    return STRATEGIES[name]()


def supports_xla(strategy: tf.distribute.Strategy) -> bool:
    """Whether the steps can be compiled with XLA under `strategy`: not with CPU replicas.

    With TF 2.21 on a CPU: over two logical CPU devices (`mirrored`) XLA runs
    both replicas' steps on the first ("Trying to access resource .../replica_1 located in
    device CPU:1 from device CPU:0"); across workers on CPU (`multi_worker`) "Collectives
    are not yet implemented for CPU devices when compiling with XLA". One replica, or GPUs.
    """
    if strategy.num_replicas_in_sync == 1:
        return True
    return all("GPU" in device.upper() for device in strategy.extended.worker_devices)


def lost_peer(error: tf.errors.UnavailableError) -> str:
    """What TensorFlow's 100-line report of a worker gone mid-run says, in one line.

    TF 2.21 names the peer in one of two ways: the coordination service's "The following
    tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n...",
    or gRPC's "Socket closed\nAdditional GRPC error information from remote target
    /job:worker/replica:0/task:0 ...".
    """
    _, _, after = error.message.partition("unhealthy (stopped sending heartbeats):")
    tasks = re.findall(r"^/job:(\w+)/replica:\d+/task:(\d+)$", after, flags=re.MULTILINE)
    tasks = tasks or re.findall(r"remote target /job:(\w+)/replica:\d+/task:(\d+)", error.message)
    who = " and ".join(f"{job} {task}" for job, task in dict.fromkeys(tasks)) or "a peer"
    return (
        f"train: lost {who} (crashed, killed or cut off); every worker keeps its last "
        "finished epoch: start them all again to resume"
    )
