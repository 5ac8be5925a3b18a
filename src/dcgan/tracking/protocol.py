"""The protocol a metric set was measured under, as MLflow tags: scores compare only
within one protocol (the same classifier file, N, reference split and seed).

The evaluate stage writes it into metrics.json (`evaluation.metrics.protocol`); the sync
step tags the run with it; `dcgan compare` warns when the rows it shows mix protocols and
the registry's `best-<dataset>` alias compares runs of one protocol only.
"""

from __future__ import annotations

TAG = "protocol"  # the one-line form; `protocol.<key>` tags hold the parts


def label(protocol: dict) -> str:
    """One line naming the protocol, e.g. `classifier 1a2b3c4d, N 1000, test, seed 0`."""
    return (f"classifier {str(protocol.get('classifier_md5'))[:8]}, N {protocol.get('n')}, "
            f"{protocol.get('reference')}, seed {protocol.get('seed')}")


def tags(protocol: dict) -> dict[str, str]:
    """The run tags of a metrics.json `protocol` entry."""
    return {TAG: label(protocol), **{f"{TAG}.{k}": str(v) for k, v in protocol.items()}}
