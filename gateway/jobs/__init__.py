"""Jobs that run beside the gateway, not in it: the LLM judge over captured answers."""
