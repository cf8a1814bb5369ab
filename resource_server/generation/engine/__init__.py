"""The pipeline engine: durable jobs and steps in PostgreSQL, leased to any number of workers."""
