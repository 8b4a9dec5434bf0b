"""The operator API under /admin (admin scope): keys, model routes, adapters, the inference log."""
