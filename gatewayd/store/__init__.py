"""All SQL: the store, its migrations, the ledger, cards and the outbox."""
