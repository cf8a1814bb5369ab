"""`x402-dev`: the whole stack on one machine (Anvil + USDC, PostgreSQL, the facilitator) for development."""
