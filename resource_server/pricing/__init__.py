"""Pricing: what each route costs, from a TOML file. Everything here is pure except `loader`'s file read."""
