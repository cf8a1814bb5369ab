"""Generation pipelines: paid, long-running work (music, audio) run by workers from PostgreSQL.

engine/     jobs and steps as rows, leases, retries, guardrails, events, settlement hooks
providers/  music providers (local synthesizer, ElevenLabs-compatible), prompt refinement and rewrites
webhooks/   signed, durable, SSRF-guarded event deliveries
tools/      concrete pipelines (music) built from the pieces above
"""
