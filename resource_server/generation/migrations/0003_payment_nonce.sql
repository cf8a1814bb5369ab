-- The EIP-3009 authorization nonce of the payment that paid for the job (0x + 64 lower-case hex). The
-- facilitator settles concurrent payments in batches that share one transaction, so a transaction hash
-- alone no longer names the payment: its receipt is GET /receipt/{tx}?nonce=<this>. NULL: an unpaid job,
-- or one created before this column (its receipt link goes without the nonce).
ALTER TABLE generation_jobs ADD COLUMN payment_nonce TEXT;
