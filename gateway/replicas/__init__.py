"""The replicas behind the gateway: the pool (discovery, picking, failover), each replica's circuit
breaker, prefix affinity, and the call step every request and shadow goes through."""
