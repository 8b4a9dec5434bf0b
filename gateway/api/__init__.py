"""HTTP: the routers (v1 for clients, admin for operators, ops for probes), their dependencies, the
middleware, and the one place errors become responses. Handlers are thin: each calls one service."""
