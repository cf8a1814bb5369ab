"""Signed, durable, SSRF-guarded webhook deliveries of job events."""
