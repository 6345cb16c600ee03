"""Jobs submitted on a schedule ([schedules.NAME]): each run is a job, and the store keeps each schedule's last
run time and job in the same commit as the job, so a restart (or `kill -9`) neither repeats nor loses a run.

Runs missed while tq-host was down follow `catch_up` (systemd timers' Persistent= is the model): "none" skips
them, "last" fires the latest once, "all" fires each (at most cron.MAX_CATCH_UP). With `overlap = false` a run
is skipped, and logged, while the schedule's previous job is still queued, delayed, running or waiting to retry;
the runs due at once (a catch-up's and the one due now) are one batch, not judged against each other.
A new schedule fires first at its first time after tq-host first sees it, and so does one whose times a reload
changed or that a reload put back. A wall clock stepped forward makes the runs in the gap missed (catch_up), as
a downtime does; stepped back, a cron schedule waits for its last run's time again, an interval counts from now.
Each job's payload says which run it is: {"schedule": NAME, "at": seconds since the epoch}. A run that tq-host
could not submit (refused: too large, say) is logged, and stored as the schedule's last run with its error:
`tqctl schedules` shows it failed, not the job of an earlier run. A schedule whose next run cannot be computed
(a cron expression that never fires, which the configuration check refuses) is logged once and disabled: no
schedule's error ends tq-host's loop.
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

CLOCK_STEP = 2.0  # seconds the wall clock may move apart from the monotonic one between two steps: else a step
RETRY_AFTER = 1.0  # seconds after a failed store write before the schedules fire again (a full disk fails each)

# The stored "error" of a last run that was skipped (overlap, catch_up): the schedule keeps the job of the run
# before, which overlap is judged against, but `tqctl schedules` shows no job for the run that had none.
SKIPPED = "skipped: "

Submit = Callable[[dict[str, Any], str], JobRecord]  # a job spec and the detail of its "submitted" event


class Scheduler:
    def __init__(self, cfg: config.Config, store: Store, jobs: JobTable, submit: Submit,
                 logger: logging.Logger) -> None:
        self.store, self.jobs, self.submit, self.logger = store, jobs, submit, logger
        # name -> (last run time, the schedule's latest job, why that run was not submitted: None if it was)
        self.state: dict[str, tuple[float, int | None, str | None]] = {}
        self.next: dict[str, float] = {}  # name -> its next run time
        self.started = time.time()  # runs due before this were missed: while tq-host was down, or a clock step
        self.missed_while = "while tq-host was down"
        self.clock: tuple[float, float] | None = None  # the wall and monotonic clocks at the last fire_due
        self.cfg = cfg
        self.disabled: dict[str, str] = {}  # name -> why its next run cannot be computed
        self.said: dict[str, str] = {}  # the same, as logged: once, not again at each configure
        self.hold_until = 0.0  # no run fires before this wall-clock time (RETRY_AFTER a failed store write)

    def load(self, now: float) -> None:
        """From the store, at start: runs due before `now` were missed while tq-host was down."""
        self.started, self.missed_while = now, "while tq-host was down"
        self.state = self.store.schedules()
        self.configure(self.cfg, now)

    def rolled_back(self, now: float) -> None:
        """After a failed commit: back to what the store holds (a run submitted in that step did not happen, and is
        due again), tried again RETRY_AFTER from now, not at each step (a full disk fails every commit)."""
        self.state = self.store.schedules()
        self.configure(self.cfg, now)
        self.hold_until = now + RETRY_AFTER

    def configure(self, cfg: config.Config, now: float | None = None) -> None:
        """Take a (reloaded) configuration. A new schedule counts from now; so does one whose times changed (cron,
        every, timezone) or that was removed and is back: its first run is its first time after now, never the
        runs of its new times since its old last run (systemd timers do the same)."""
        old, self.cfg = self.cfg.schedules, cfg
        now = time.time() if now is None else now
        self.next, self.disabled, self.clock = {}, {}, None
        for name, schedule in cfg.schedules.items():
            if name not in self.state:  # never run: its first run is the first time after now
                self._restart(name, now)
            elif _times(old.get(name)) != _times(schedule):
                self._restart(name, now)
                self.logger.info("schedule %s: %s: it counts from now", name, "changed" if name in old
                                 else "back in the configuration", extra=self._fields(schedule))
            self._plan(schedule)
        self.said = {name: why for name, why in self.said.items() if self.disabled.get(name) == why}

    def _restart(self, name: str, now: float) -> None:
        """The schedule counts from `now`, as a new one."""
        self.state[name] = (now, None, None)
        self.store.save_schedule(name, now, None)

    def next_due(self) -> float | None:
        """The wall-clock time of the next run (None: no schedule)."""
        return max(min(self.next.values()), self.hold_until) if self.next else None

    def _plan(self, schedule: config.ScheduleConfig) -> None:
        """Its next run from its last one; a schedule whose next run cannot be computed is disabled, and says so."""
        try:
            self.next[schedule.name] = cron.next_after(schedule, self.state[schedule.name][0])
        except Exception as e:  # (croniter's CroniterBadDateError: a ValueError; any other: the loop goes on)
            self._disable(schedule, e)

    def _disable(self, schedule: config.ScheduleConfig, e: Exception) -> None:
        self.next.pop(schedule.name, None)
        self.disabled[schedule.name] = why = f"cannot compute its next run: {e or type(e).__name__}"
        if self.said.get(schedule.name) != why:
            self.said[schedule.name] = why
            self.logger.error("schedule %s: disabled until the configuration changes: %s", schedule.name, why,
                              extra=self._fields(schedule))

    def fire_due(self, now: float, mono: float) -> None:
        """Submit the runs that are due by the wall-clock time `now`, and stage each schedule's new state in the same
        transaction. One long catch-up a call at most (up to cron.MAX_CATCH_UP runs computed): the others wait for
        the next loop step, which pings the watchdog first. `mono`: the monotonic clock, which tells a step of the
        wall clock."""
        self._watch_clock(now, mono)
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
                self._disable(schedule, e)

    def _watch_clock(self, now: float, mono: float) -> None:
        """A wall clock stepped forward (NTP after a resume, `date -s`): the runs in the gap were missed, as runs
        are while tq-host is down, and follow catch_up. Stepped back: a cron schedule runs again once the clock
        passes its last run (none runs twice); an `every` one counts from now."""
        if self.clock is not None:
            step = (now - self.clock[0]) - (mono - self.clock[1])
            if step > CLOCK_STEP:
                self.started, self.missed_while = now, f"in the clock's step forward of {step:.0f} s"
                self.logger.warning("the clock stepped forward %.0f s (or the machine slept): the schedules' runs "
                                    "in between follow their catch_up", step)
            elif step < -CLOCK_STEP:
                self.logger.warning("the clock stepped back %.0f s: a cron schedule runs again once the clock passes "
                                    "its last run; an interval counts from now", -step)
                self.started = min(self.started, now)  # (a run after now is on time, whatever came before)
                self._stepped_back(now)
        self.clock = (now, mono)

    def _stepped_back(self, now: float) -> None:
        for name, schedule in self.cfg.schedules.items():
            if schedule.every is not None and self.state[name][0] > now:
                _, last_job, error = self.state[name]
                self.state[name] = (now, last_job, error)
                self.store.save_schedule(name, now, last_job, error)
                self._plan(schedule)

    def _fire(self, schedule: config.ScheduleConfig, now: float) -> bool:
        """Submit the schedule's runs due by `now`; whether that was a long catch-up (the cap reached)."""
        name = schedule.name
        last, last_job, error = self.state[name]
        runs, more = cron.due(schedule, last, now)
        missed = [run for run in runs if run < self.started]  # while tq-host was down, or in a clock's step
        caught = {"none": [], "last": missed[-1:], "all": missed}[schedule.catch_up]
        if len(caught) < len(missed) or more:
            latest = f": the latest {len(caught)}" if more and caught else ""
            self.logger.info("schedule %s: %s%d run(s) missed %s, %d submitted now (catch_up = \"%s\"%s)", name,
                             "more than " if more else "", len(missed), self.missed_while, len(caught),
                             schedule.catch_up, latest if schedule.catch_up == "all" else "",
                             extra=self._fields(schedule))
        batch = caught + runs[len(missed):]
        if batch:
            last_job, error = self._batch(schedule, batch, last_job)
        elif runs:
            error = f"{SKIPPED}missed {self.missed_while} (catch_up = \"{schedule.catch_up}\")"
        if runs:
            self.state[name] = (runs[-1], last_job, error)
            self.store.save_schedule(name, runs[-1], last_job, error)
        self._plan(schedule)
        return more

    def _batch(self, schedule: config.ScheduleConfig, runs: list[float],
               last_job: int | None) -> tuple[int | None, str | None]:
        """Submit the runs due at once (a catch-up's and the one due now: one batch, whose runs are not judged for
        overlap against each other): the schedule's job from now on (the old one if they were skipped or refused),
        and why the last run was refused or skipped (None: it was submitted). One line for the batch, not one a run."""
        one = len(runs) == 1
        which = f"the run of {_when(runs[0])}" if one else f"{len(runs)} runs, {_when(runs[0])} to {_when(runs[-1])},"
        if not schedule.overlap and last_job is not None:
            previous = self.jobs.jobs.get(last_job)
            if previous is not None and previous.state not in FINAL:
                self.logger.warning("schedule %s: %s %s skipped: job %d of the run before is still %s (overlap = "
                                    "false)", schedule.name, which, "is" if one else "are", last_job, previous.state,
                                    extra=self._fields(schedule))
                return last_job, (f"{SKIPPED}job {last_job} of the run before was still {previous.state} "
                                  "(overlap = false)")
        refused: list[str] = []
        for at in runs:
            job_id, error = self._run(schedule, at)
            if error is None:
                last_job = job_id
            else:
                refused.append(error)
        if refused:
            self.logger.error("schedule %s: %s %s not submitted: %s", schedule.name,
                              which if len(refused) == len(runs) else f"{len(refused)} of {which}",
                              "was" if one else "were", refused[-1], extra=self._fields(schedule))
        return last_job, error

    def _run(self, schedule: config.ScheduleConfig, at: float) -> tuple[int | None, str | None]:
        """Submit one run: its job's id, or why it was refused."""
        spec: dict[str, Any] = {"task": schedule.task, "args": list(schedule.args),
                                "payload": {"schedule": schedule.name, "at": at}}
        if schedule.queue is not None:
            spec["queue"] = schedule.queue
        if schedule.priority is not None:
            spec["priority"] = schedule.priority
        try:
            job = self.submit(spec, f"by schedule {schedule.name} (the run of {_when(at)})")
        except RequestError as e:  # refused (too large, say): this run is lost, and says so
            return None, str(e)
        return job.id, None

    def _fields(self, schedule: config.ScheduleConfig) -> dict[str, Any]:
        """The journal fields of a line about the schedule's runs (`journalctl TQ_SCHEDULE=NAME`)."""
        task = self.cfg.task_for(schedule.task)
        queue = schedule.queue or (task.queue if task is not None else None)
        return {"TQ_SCHEDULE": schedule.name, "TQ_TASK": schedule.task} | ({"TQ_QUEUE": queue} if queue else {})

    def public(self) -> list[dict[str, Any]]:
        """Every schedule with its next run, its last run and that run's job (tqctl schedules)."""
        out = []
        for name, schedule in sorted(self.cfg.schedules.items()):
            last, last_job, error = self.state.get(name, (None, None, None))
            if error is not None:
                last_job = None  # the last run has no job: it failed or was skipped; an earlier run's job is not its
            job = None if last_job is None else self.jobs.find(last_job)
            ran = last_job is not None or error is not None  # else `last` is when tq-host first saw the schedule
            skipped = error is not None and error.startswith(SKIPPED)
            out.append({"name": name, "cron": schedule.cron, "every": schedule.every, "task": schedule.task,
                        "timezone": schedule.timezone, "catch_up": schedule.catch_up, "overlap": schedule.overlap,
                        "next_run": self.next.get(name), "last_run": last if ran else None,
                        "last_job": last_job, "last_state": None if job is None else job.state,
                        "last_error": None if skipped else error,
                        "last_skipped": error[len(SKIPPED):] if skipped and error else None,
                        "disabled": self.disabled.get(name)})
        return out


def _times(schedule: config.ScheduleConfig | None) -> tuple[str | None, float | None, str | None] | None:
    """What decides a schedule's times."""
    return None if schedule is None else (schedule.cron, schedule.every, schedule.timezone)


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
