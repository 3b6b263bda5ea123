"""ShardedExecutor: one job stream over several processes, or Ray actors.

The files, each one concern, imports going down only:

* ``_executor``: the parent side, ``ShardedExecutor`` (placement, credits, error rules);
* ``_process``: the process transport, both ends (loaded when shards start);
* ``_ray``: the Ray transport, both ends (loaded only for ``backend="ray"``);
* ``_shard``: the shard side that both transports run, ``_ShardCore``;
* ``_protocol``: what crosses between the two sides, and the transport interface.
"""

from ._executor import ShardedExecutor
from ._protocol import ShardCrashed

__all__ = ("ShardCrashed", "ShardedExecutor")
