"""Shared state: the one Redis client with its circuit, and the write-behind that batches what the
request path records into one Redis pipeline."""
