"""``bench sse --upstream-pool-limit N`` only: a uvicorn worker whose aiohttp
connection pools allow ``N`` connections (per host and in all) instead of what
``apps.llm.runtime`` asks for (256 / 128 per host at the time of writing).

A what-if, labelled as such in the results: it shows how many streams the chat
path itself holds when the proxy's upstream pool is not the limit. Nothing
outside this benchmark imports it.
"""

from __future__ import annotations

import os
import sys

import aiohttp
import uvicorn

LIMIT = int(os.environ["BENCH_UPSTREAM_POOL_LIMIT"])
_original_init = aiohttp.TCPConnector.__init__


def _init(self, *args, **kwargs):
    kwargs["limit"] = LIMIT
    kwargs["limit_per_host"] = LIMIT
    _original_init(self, *args, **kwargs)


aiohttp.TCPConnector.__init__ = _init

if __name__ == "__main__":
    port = int(sys.argv[1])
    uvicorn.run("config.asgi:application", host="127.0.0.1", port=port, workers=1, lifespan="off",
                access_log=False, log_level="warning", backlog=4096, timeout_keep_alive=60)
