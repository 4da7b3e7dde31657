"""Running capture-set tasks on an existing Dask distributed cluster (the scheduler's address).

One task per capture set; each worker reads its own inputs and writes its part files into the
run's staging folder, so the dataset location must be one every worker reaches (a shared file
system or an fsspec URL). Outcomes come back in task order; a task that raised ends the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from halfclose.errors import EnvironmentProblem
from halfclose.fleet.tasks import SetOutcome, SetTask, run_set

__all__ = ["run_on_dask"]

#: Seconds to wait for the scheduler to answer.
CONNECT_TIMEOUT_S = 20


def run_on_dask(address: str, tasks: Sequence[SetTask], on_done: Callable[[SetOutcome], None]) -> list[SetOutcome]:
    """Submit *tasks* to the scheduler at *address* and gather their outcomes."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise EnvironmentProblem(
            "--dask needs dask.distributed: install it with pip install 'halfclose[all]'"
        ) from exc
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise EnvironmentProblem(
            f"cannot reach the Dask scheduler at {address}: {exc}: start one (dask scheduler) or fix the address"
        ) from exc
    try:
        keys = [f"halfclose-set-{t.run_id}-{t.set_id}" for t in tasks]
        futures = client.map(run_set, list(tasks), key=keys, pure=False, retries=0)
        by_key: dict[str, SetOutcome] = {}
        for fut in as_completed(futures):
            outcome = fut.result()
            by_key[str(fut.key)] = outcome
            on_done(outcome)
        return [by_key[k] for k in keys]
    finally:
        client.close()
