"""A leader candidate in its own process, for the SIGSTOP test: it campaigns, then writes
with its fence without ever checking whether it still leads, printing every outcome.

usage: python etcd_candidate.py ENDPOINTS PREFIX
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from tessera.store import NotLeader, Put, StoreUnavailable
from tessera.store.etcd import EtcdStore
from tessera.store.leadership import Leadership


async def main(endpoints: str, prefix: str) -> None:
    store = EtcdStore(endpoints.split(","), prefix=prefix, timeout=1.0)
    leadership = Leadership(store, "master", 1, candidate_id="a", url="http://a:5050")
    fence = await leadership.campaign(timeout=10)
    print("elected", fence.create_revision, flush=True)
    writer = store.fenced(fence)
    refused = 0
    i = 0
    while refused < 3:
        i += 1
        try:
            revision = await writer.commit([Put("writes", f"a{i:05}", {"i": i})])
            print("ok", i, revision, flush=True)
        except NotLeader:
            refused += 1
            print("refused", i, flush=True)
        except StoreUnavailable as error:
            # The write in flight when the process was stopped timed out meanwhile.
            print("unknown", i, type(error).__name__, flush=True)
        await asyncio.sleep(0.01)
    # Refusals come first; its own loop notices the lost lease within moments.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(leadership.wait_lost(), 2.0)
    print("leader" if leadership.is_leader else "follower", flush=True)
    await leadership.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
