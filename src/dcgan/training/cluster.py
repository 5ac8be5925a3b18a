"""The cluster a multi-worker training runs on, as the `TF_CONFIG` environment variable
describes it (TensorFlow's convention: the same JSON on every machine but for `task`).

Kept apart from distribution.py so that reading it needs no TensorFlow (`dcgan
train-worker` checks it before starting anything).
"""

from __future__ import annotations

import json
import os

from dcgan.core.errors import UserError


def tf_config() -> dict | None:
    """The parsed `TF_CONFIG`, or None when unset.

    Raises:
        UserError: if it is not JSON with a `cluster` and a `task`.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        hosts = [h for jobs in cluster.values() for h in jobs]
        index = int(task["index"])
        if task["type"] not in cluster or not 0 <= index < len(cluster[task["type"]]):
            raise KeyError(f"task {task['type']} {index} is not in the cluster")
        if not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ValueError("every cluster entry must be a host:port string")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"TF_CONFIG is invalid ({err}); set it to JSON like "
            '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\', or unset it'
        ) from None
    return config


def _cluster_tasks(config: dict) -> list[tuple[str, int]]:
    """(type, index) of every training task: chief first, then workers (no evaluator/ps)."""
    cluster = config["cluster"]
    return [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]


def task_rank(config: dict) -> tuple[int, int]:
    """(this task's place among the training tasks, their number); place 0 is the chief
    (TF_CONFIG's `chief`, else worker 0).

    Raises:
        UserError: if the task is not a training task (an evaluator or parameter server).
    """
    tasks = _cluster_tasks(config)
    task = (config["task"]["type"], int(config["task"]["index"]))
    if task not in tasks:
        raise UserError(f"TF_CONFIG's task {task[0]} {task[1]} does not train (only chief and "
                        "worker tasks do); give this machine a chief or worker task")
    return tasks.index(task), len(tasks)
