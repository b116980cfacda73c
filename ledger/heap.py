"""The garbage collector of a long-running ledger process, set for a server's heap.

CPython's cyclic collector runs a young collection every 700 net allocations of
container objects and, every hundred of those, a full one over every object the process
holds: the modules, the app, the pools, the stream cache. An API worker placing orders
allocates thousands of objects per request, nearly all freed by reference counting as
the request ends; the collections find next to nothing, yet cost 7 to 10 % of the
worker's CPU (measured in docs/adr/0018-api-cpu-per-request.md).

`settle()`, called once a process has built what it keeps for its lifetime, collects
once and freezes the survivors (`gc.freeze`): the collector never looks at them again.
The young generation's threshold goes up, so that a request's objects are mostly freed
before a collection would count them; collections still run, so reference cycles
(exceptions with their tracebacks, say) are still reclaimed.
"""

from __future__ import annotations

import gc
from typing import Final

# Net container allocations between young collections (CPython's default: 700), and
# the default multipliers for the older generations.
YOUNG_THRESHOLD: Final = 20_000
OLDER_THRESHOLDS: Final = (10, 10)


def settle() -> None:
    """Freeze what the process holds so far and raise the young collection's threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
