-- The reconciler's scans, on partial indexes so they stay cheap as the table grows: challenges held in
-- `verified` (stuck-challenge recovery and the unsettled gauge), and expired ones (retention).
CREATE INDEX rs_challenges_verified ON rs_challenges (updated_at) WHERE status = 'verified';
CREATE INDEX rs_challenges_expired ON rs_challenges (expires_at) WHERE status = 'expired';
