"""Music providers, prompt refinement and provider-safe rewrites."""
