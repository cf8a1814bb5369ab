-- One transaction may carry several settlements: concurrent transfers go out as one Multicall3
-- tryAggregate call. Which settlements a stored transaction carries now lives in its own table; a
-- transaction of one settlement has one member.
CREATE TABLE settlement_transaction_members (
    tx_hash        TEXT   NOT NULL REFERENCES settlement_transactions (tx_hash) ON DELETE CASCADE,
    settlement_id  BIGINT NOT NULL REFERENCES settlements (id),
    PRIMARY KEY (tx_hash, settlement_id)
);
CREATE INDEX settlement_transaction_members_settlement ON settlement_transaction_members (settlement_id);
INSERT INTO settlement_transaction_members (tx_hash, settlement_id)
    SELECT tx_hash, settlement_id FROM settlement_transactions;
ALTER TABLE settlement_transactions DROP COLUMN settlement_id;
