"""Model routes: a public model name served by weighted variants (canary, A/B), with sticky users,
fallbacks, shadow traffic and a guard that steps a canary up or rolls it back on live signals."""
