"""Atlas domain: ledger records, pure state transitions and the table definitions that hold them."""
