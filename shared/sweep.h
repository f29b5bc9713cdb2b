/*
 * sweep: finds what is left of a job after its process group was killed.
 * A handler's descendant can leave the job's group (setsid, setpgid) and so
 * escape the group kill; it still carries the job's environment. sweep kills
 * every process of ours whose environment has both DROVER_JOB_ID=<id> and
 * DROVER_WORKER=<slot>, so that no process of a job outlives it.
 */
#ifndef DROVER_SWEEP_H
#define DROVER_SWEEP_H

/* SIGKILLs the job's remaining processes; returns how many, or -1 if /proc cannot be read. */
int sweep_job_processes(const char *job_id, int slot);

#endif
