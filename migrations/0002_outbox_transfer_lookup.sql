-- GET /v1/transfers/{id} answers "pending" for a transfer that is accepted but not yet applied
-- by the ledger: it finds the transfer's command in the outbox by its transfer id.
CREATE INDEX outbox_request_transfer_id ON outbox ((payload->>'transfer_id'))
    WHERE event_type = 'RequestTransfer';
