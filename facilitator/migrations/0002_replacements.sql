-- A transaction stuck in the mempool (its fee cap under the base fee, or simply too slow) is replaced by one
-- with the same signer nonce and higher fees. The first transaction for a nonce keeps replacement = 0, so
-- two settlements still can never be given the same nonce.
ALTER TABLE settlement_transactions ADD COLUMN replacement INT NOT NULL DEFAULT 0;
ALTER TABLE settlement_transactions DROP CONSTRAINT settlement_transactions_signer_nonce;
ALTER TABLE settlement_transactions ADD CONSTRAINT settlement_transactions_signer_nonce
    UNIQUE (chain_id, signer, signer_nonce, replacement);
