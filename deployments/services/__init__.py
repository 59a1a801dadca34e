"""Deployments' services, one module per operation (import from the module; this package re-exports nothing,
so importing one module does not load them all).

Jobs:
    jobs.py             creating jobs: `deployment_create`, `deployments_create_many` (a rollout's chunk)
    pending_jobs.py     answering devices' jobs/get: `jobs_answer_pending`, `jobs_answer_pending_many`
    device_updates.py   devices' job updates: `jobs_apply_device_updates`, `job_apply_device_update`
    job_endings.py      `job_cancel`, the timeouts: `jobs_sweep_timeouts`, `jobs_expire_queued`
    job_transitions.py  one job's guarded status change with its event and audit entry (`_transition`)
    installations.py    what devices run: `installations_preinstall`, installations of succeeded jobs

Staged rollouts:
    rollout_drafts.py   `rollout_create`, `rollout_preview`: the plan stored, the targets resolved
    rollouts.py         commands: `rollout_start` (and `rollout_create_and_start`), `rollout_pause`,
                        `rollout_resume`, `rollout_approve` (`rollout_can_approve`), `rollout_abort`,
                        `rollout_rollback`, `rollout_skip_gates`, `rollout_force_rollback`; and
                        `rollout_cancel_jobs`, queued after an abort or a rollback
    tick.py             `rollout_advance`, `rollouts_tick`: waves through their gates (install, bake)
    dispatch.py         a wave's next chunk of jobs at the plan's rate limit
    rollback.py         a rolling-back rollout's progress, to ROLLED_BACK
    rollout_state.py    rollouts' and waves' guarded transitions, gate records, the rollout row lock
    rollout_queue.py    work queued after commit (advance, cancel jobs) through the tasks tasks.py registers

Names with a leading underscore are the package's own: its modules share them, nothing outside imports them.
"""
