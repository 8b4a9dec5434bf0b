"""Who is calling and what they may spend: principals, API keys, JWTs, rate limits and budgets, the
response cache, usage and hosted-API cost. Admission (before the call) and charges (after it)."""
