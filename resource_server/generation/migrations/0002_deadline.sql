-- A job's deadline: past it the job fails as "timeout" instead of running on. Paid jobs get one sized to
-- their payment's validity window, so a job that completes can still be settled; NULL: no deadline.
ALTER TABLE generation_jobs ADD COLUMN deadline_at TIMESTAMPTZ;

-- A queue table churns: every job is updated several times within seconds. Vacuum and analyze it after
-- 2 % of changes instead of the default 20 %, so dead row versions do not pile up in front of the claim
-- index and the planner knows how many jobs are waiting (a stale count made it sort the whole queue).
ALTER TABLE generation_jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
