"""The Celery app that tests/test_sync_celery.py runs in a real worker (prefork pool).

Configured by environment variables. Its SyncTokenManager is created at import, in the worker's
main process, and used there (a token fetched, its loop thread running) before the pool forks
its processes: each pool process then runs on the manager it inherited.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from _worker import MARGINS
from celery import Celery

from asynctoken import FileStore, KeliwebProvider
from asynctoken.requests import TokenAuth
from asynctoken.sync import SyncTokenManager

BROKER = os.environ["ASYNCTOKEN_TEST_BROKER"]
API_URL = os.environ["ASYNCTOKEN_TEST_API_URL"]

app = Celery("celery_tasks", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)

CREATED_IN = os.getpid()
tm = SyncTokenManager(
    store=FileStore(os.environ["ASYNCTOKEN_TEST_STORE"]),
    margins=MARGINS,
)
tm.add(
    "shared",
    KeliwebProvider(
        "test-client", "test-secret", token_url=os.environ["ASYNCTOKEN_TEST_TOKEN_URL"]
    ),
)
tm.get_token("shared")
auth = TokenAuth(tm, "shared")


@app.task
def call_api() -> dict[str, Any]:
    """One authorized call to the protected API."""
    response = requests.get(API_URL, auth=auth, timeout=10)
    return {"status": response.status_code, "pid": os.getpid(), "manager_created_in": CREATED_IN}
