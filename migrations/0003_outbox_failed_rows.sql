-- An outbox row the relay can never publish as it is (a record over Kafka's size limit, a
-- payload that is not a record) is set aside with its reason instead of holding up the rows
-- behind it. It stays in the outbox, never reaped, until an operator sends it again
-- (`atlas outbox-retry`) once the cause is fixed.
ALTER TABLE outbox ADD COLUMN failed_at timestamptz, ADD COLUMN failure text;
CREATE INDEX outbox_failed ON outbox (failed_at) WHERE failed_at IS NOT NULL;
