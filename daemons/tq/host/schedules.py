"""Jobs submitted on a schedule ([schedules.NAME]): each run is a job, and the store keeps each schedule's last
run time and job in the same commit as the job, so a restart (or `kill -9`) neither repeats nor loses a run.

Runs missed while tq-host was down follow `catch_up` (systemd timers' Persistent= is the model): "none" skips
them, "last" fires the latest once, "all" fires each (at most cron.MAX_CATCH_UP). With `overlap = false` a run
is skipped, and logged, while the schedule's previous job is still queued, delayed, running or waiting to retry.
A new schedule fires first at its first time after tq-host first sees it. Each job's payload says which run it
is: {"schedule": NAME, "at": seconds since the epoch}. A run that tq-host could not submit (refused: too large,
say) is logged, and stored as the schedule's last run with its error: `tqctl schedules` shows it failed, not the
job of an earlier run. A schedule whose next run cannot be computed (a cron expression that never fires, which
the configuration check refuses) is logged once and disabled: no schedule's error ends tq-host's loop.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .. import config, cron
from ..control import RequestError
from ..states import FINAL
from .jobs import JobTable
from .records import JobRecord
from .store import Store

RETRY_AFTER = 1.0  # seconds after a failed store write before the schedules fire again (a full disk fails each)

Submit = Callable[[dict[str, Any], str], JobRecord]  # a job spec and the detail of its "submitted" event


class Scheduler:
    def __init__(self, cfg: config.Config, store: Store, jobs: JobTable, submit: Submit,
                 logger: logging.Logger) -> None:
        self.store, self.jobs, self.submit, self.logger = store, jobs, submit, logger
        # name -> (last run time, the schedule's latest job, why that run was not submitted: None if it was)
        self.state: dict[str, tuple[float, int | None, str | None]] = {}
        self.next: dict[str, float] = {}  # name -> its next run time
        self.started = time.time()  # runs due before this were missed while tq-host was down
        self.cfg = cfg
        self.disabled: dict[str, str] = {}  # name -> why its next run cannot be computed
        self.hold_until = 0.0  # no run fires before this wall-clock time (RETRY_AFTER a failed store write)

    def load(self, now: float) -> None:
        """From the store, at start: runs due before `now` were missed while tq-host was down."""
        self.started = now
        self.state = self.store.schedules()
        self.configure(self.cfg, now)

    def rolled_back(self, now: float) -> None:
        """After a failed commit: back to what the store holds (a run submitted in that step did not happen, and is
        due again), tried again RETRY_AFTER from now, not at each step (a full disk fails every commit)."""
        self.state = self.store.schedules()
        self.configure(self.cfg, now)
        self.hold_until = now + RETRY_AFTER

    def configure(self, cfg: config.Config, now: float | None = None) -> None:
        """Take a (reloaded) configuration: a new schedule counts from now, a changed one from its last run."""
        self.cfg = cfg
        now = time.time() if now is None else now
        self.next, self.disabled = {}, {}
        for name, schedule in cfg.schedules.items():
            if name not in self.state:  # never run: its first run is the first time after now
                self.state[name] = (now, None, None)
                self.store.save_schedule(name, now, None)
            self._plan(schedule)

    def next_due(self) -> float | None:
        """The wall-clock time of the next run (None: no schedule)."""
        return max(min(self.next.values()), self.hold_until) if self.next else None

    def _plan(self, schedule: config.ScheduleConfig) -> None:
        """Its next run from its last one; a schedule whose next run cannot be computed is disabled, and says so."""
        try:
            self.next[schedule.name] = cron.next_after(schedule, self.state[schedule.name][0])
        except Exception as e:  # (croniter's CroniterBadDateError: a ValueError; any other: the loop goes on)
            self._disable(schedule.name, e)

    def _disable(self, name: str, e: Exception) -> None:
        self.next.pop(name, None)
        self.disabled[name] = why = f"cannot compute its next run: {e or type(e).__name__}"
        self.logger.error("schedule %s: disabled until the configuration changes: %s", name, why,
                          extra={"TQ_SCHEDULE": name})

    def fire_due(self, now: float) -> None:
        """Submit the runs that are due, and stage each schedule's new state in the same transaction. One long
        catch-up a call at most (up to cron.MAX_CATCH_UP runs computed): the others wait for the next loop step,
        which pings the watchdog first."""
        if now < self.hold_until <= now + RETRY_AFTER:  # (a clock stepped back does not hold them longer)
            return
        for name, at in list(self.next.items()):
            if at > now:
                continue
            schedule = self.cfg.schedules[name]
            try:
                if self._fire(schedule, now):
                    return
            except sqlite3.Error:  # the store's: the step is rolled back (Host._store_failed)
                raise
            except Exception as e:  # no schedule's error ends tq-host's loop
                self._disable(name, e)

    def _fire(self, schedule: config.ScheduleConfig, now: float) -> bool:
        """Submit the schedule's runs due by `now`; whether that was a long catch-up (the cap reached)."""
        name = schedule.name
        last, last_job, error = self.state[name]
        runs, more = cron.due(schedule, last, now)
        missed = [run for run in runs if run < self.started]  # while tq-host was down
        caught = {"none": [], "last": missed[-1:], "all": missed}[schedule.catch_up]
        if len(caught) < len(missed) or more:
            latest = f": the latest {len(caught)}" if more and caught else ""
            self.logger.info("schedule %s: %s%d run(s) missed while tq-host was down, %d submitted now "
                             "(catch_up = \"%s\"%s)", name, "more than " if more else "", len(missed), len(caught),
                             schedule.catch_up, latest if schedule.catch_up == "all" else "")
        for run in caught + runs[len(missed):]:
            last_job, error = self._run(schedule, run, last_job)
        if runs:
            self.state[name] = (runs[-1], last_job, error)
            self.store.save_schedule(name, runs[-1], last_job, error)
        self._plan(schedule)
        return more

    def _run(self, schedule: config.ScheduleConfig, at: float, last_job: int | None) -> tuple[int | None, str | None]:
        """Submit one run: the id of the schedule's job from now on (the old one if this run was skipped or
        refused), and why it was refused (None: it was not)."""
        if not schedule.overlap and last_job is not None:
            previous = self.jobs.jobs.get(last_job)
            if previous is not None and previous.state not in FINAL:
                self.logger.warning("schedule %s: the run of %s is skipped: job %d of the run before is still %s "
                                    "(overlap = false)", schedule.name, _when(at), last_job, previous.state)
                return last_job, None
        spec: dict[str, Any] = {"task": schedule.task, "args": list(schedule.args),
                                "payload": {"schedule": schedule.name, "at": at}}
        if schedule.queue is not None:
            spec["queue"] = schedule.queue
        if schedule.priority is not None:
            spec["priority"] = schedule.priority
        try:
            job = self.submit(spec, f"by schedule {schedule.name} (the run of {_when(at)})")
        except RequestError as e:  # refused (too large, say): this run is lost, and says so
            self.logger.error("schedule %s: the run of %s was not submitted: %s", schedule.name, _when(at), e)
            return last_job, str(e)
        return job.id, None

    def public(self) -> list[dict[str, Any]]:
        """Every schedule with its next run, its last run and that run's job (tqctl schedules)."""
        out = []
        for name, schedule in sorted(self.cfg.schedules.items()):
            last, last_job, error = self.state.get(name, (None, None, None))
            if error is not None:
                last_job = None  # the last run has no job: it failed, and an earlier run's job is not its
            job = None if last_job is None else self.jobs.find(last_job)
            ran = last_job is not None or error is not None  # else `last` is when tq-host first saw the schedule
            out.append({"name": name, "cron": schedule.cron, "every": schedule.every, "task": schedule.task,
                        "timezone": schedule.timezone, "catch_up": schedule.catch_up, "overlap": schedule.overlap,
                        "next_run": self.next.get(name), "last_run": last if ran else None,
                        "last_job": last_job, "last_state": None if job is None else job.state,
                        "last_error": error, "disabled": self.disabled.get(name)})
        return out


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
