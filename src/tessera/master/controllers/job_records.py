"""The jobs controller's records: jobs, runs, history and schedule marks, in memory for
reads and written to the store in the batch of the pass (or API call) that changed them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tessera.model.job import Job, JobHistory, JobMarks, JobRun
from tessera.model.task import TaskSpec
from tessera.store import Delete, Operation, Put, StateStore

JOBS = "jobs"
RUNS = "job_runs"
HISTORY = "job_history"
MARKS = "job_marks"


@dataclass
class RunChange:
    """What one pass or API call changes: store operations, committed in one transaction
    before any task is submitted or killed."""

    operations: list[Operation] = field(default_factory=list)
    submits: list[tuple[str, TaskSpec]] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)


class JobRecords:
    def __init__(self, store: StateStore, history_limit: int) -> None:
        self.store = store
        self.limit = history_limit
        self.jobs: dict[str, Job] = {}
        self.histories: dict[str, JobHistory] = {}
        self._marks: dict[str, JobMarks] = {}
        self._active: dict[str, dict[str, JobRun]] = {}
        # Finished runs still listed in their job's history, oldest first.
        self._finished: dict[str, dict[str, JobRun]] = {}
        self._task_job: dict[str, str] = {}
        self._children: dict[str, set[str]] = {}

    async def load(self) -> None:
        for data in (await self.store.load(JOBS)).values():
            self._index_job(Job.from_json(data))
        for job_id, data in (await self.store.load(HISTORY)).items():
            self.histories[job_id] = JobHistory.from_json(data)
        for job_id, data in (await self.store.load(MARKS)).items():
            self._marks[job_id] = JobMarks.from_json(data)
        runs = [JobRun.from_json(data) for data in (await self.store.load(RUNS)).values()]
        for run in sorted(runs, key=lambda r: (r.completed_at or 0.0, r.created_at)):
            self._index_run(run)

    # ---- reads ---------------------------------------------------------------------------

    def all_job_ids(self) -> set[str]:
        """Jobs, and the jobs of runs that outlived their job (being stopped)."""
        return set(self.jobs) | {job_id for job_id, runs in self._active.items() if runs}

    def job_of_task(self, task_id: str) -> str | None:
        return self._task_job.get(task_id)

    def active_runs(self, job_id: str) -> list[JobRun]:
        return list(self._active.get(job_id, {}).values())

    def all_active_runs(self) -> list[JobRun]:
        return [run for runs in self._active.values() for run in runs.values()]

    def finished_runs(self, job_id: str) -> list[JobRun]:
        return list(self._finished.get(job_id, {}).values())

    def run(self, job_id: str, run_id: str) -> JobRun | None:
        found = self._active.get(job_id, {}).get(run_id)
        return found or self._finished.get(job_id, {}).get(run_id)

    def history(self, job_id: str) -> JobHistory:
        return self.histories.get(job_id) or JobHistory()

    def marks(self, job_id: str) -> JobMarks:
        return self._marks.get(job_id) or JobMarks()

    def children_of(self, job_id: str) -> set[str]:
        return set(self._children.get(job_id, ()))

    def dependency_graph(self) -> dict[str, tuple[str, ...]]:
        return {job_id: job.spec.dependencies for job_id, job in self.jobs.items()}

    # ---- writes (memory now, store with the change) -----------------------------------

    def put_job(self, job: Job, change: RunChange) -> None:
        previous = self.jobs.get(job.id)
        if previous is not None:
            self._unindex_dependencies(previous)
        self._index_job(job)
        change.operations.append(Put(JOBS, job.id, job.to_json()))

    def delete_job(self, job_id: str, change: RunChange) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            self._unindex_dependencies(job)
        self.histories.pop(job_id, None)
        self._marks.pop(job_id, None)
        for run in self._finished.pop(job_id, {}).values():
            change.operations.append(Delete(RUNS, run.key))
        change.operations += [
            Delete(JOBS, job_id),
            Delete(HISTORY, job_id),
            Delete(MARKS, job_id),
        ]

    def put_run(self, run: JobRun, change: RunChange) -> None:
        self._index_run(run)
        change.operations.append(Put(RUNS, run.key, run.to_json()))

    def forget_run(self, run: JobRun, change: RunChange) -> None:
        self._active.get(run.job_id, {}).pop(run.id, None)
        self._finished.get(run.job_id, {}).pop(run.id, None)
        self._drop_tasks(run.task_ids)
        change.operations.append(Delete(RUNS, run.key))

    def prune_finished(self, job_id: str, change: RunChange) -> None:
        """Keep the records of the finished runs the history lists, and no others."""
        history = self.history(job_id)
        listed = {r.id for r in (*history.successful_runs, *history.failed_runs)}
        finished = self._finished.get(job_id, {})
        for run_id in [run_id for run_id in finished if run_id not in listed]:
            change.operations.append(Delete(RUNS, finished.pop(run_id).key))

    def put_history(self, job_id: str, history: JobHistory, change: RunChange) -> None:
        self.histories[job_id] = history
        change.operations.append(Put(HISTORY, job_id, history.to_json()))

    def put_marks(self, job_id: str, marks: JobMarks, change: RunChange) -> None:
        self._marks[job_id] = marks
        change.operations.append(Put(MARKS, job_id, marks.to_json()))

    # ---- indexes -------------------------------------------------------------------------

    def _index_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        for parent in job.spec.dependencies:
            self._children.setdefault(parent, set()).add(job.id)

    def _unindex_dependencies(self, job: Job) -> None:
        for parent in job.spec.dependencies:
            self._children.get(parent, set()).discard(job.id)

    def _index_run(self, run: JobRun) -> None:
        if run.status.finished:
            self._active.get(run.job_id, {}).pop(run.id, None)
            self._finished.setdefault(run.job_id, {})[run.id] = run
            self._drop_tasks(run.task_ids)
            return
        self._active.setdefault(run.job_id, {})[run.id] = run
        for task_id in run.task_ids:
            self._task_job[task_id] = run.job_id

    def _drop_tasks(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._task_job.pop(task_id, None)
