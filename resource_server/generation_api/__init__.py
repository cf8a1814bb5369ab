"""The generation API: tools for sale through x402 (resource_server/generation/ does the work).

Endpoints (`x402-resource-server serve` mounts them next to /pricing, /quote, /audit):

  GET  /tools                        catalogue: id, description, inputSchema (JSON Schema), limits, price rule
                                     (steps, markup, what it depends on), payment terms (accepts, settlement,
                                     maxTimeoutSeconds), URLs
  GET  /tools/{id}                   one tool
  POST /tools/{id}/quote             {"inputs": {...}} -> price breakdown, atomic amounts and a payable
                                     challenge for POST /generate (v2 + v1 requirements). Tools are quoted
                                     here, not by POST /quote, which keeps pricing the pricing file's routes.
  POST /generate                     x402-paid. {"tool", "inputs", "delivery": {"mode": "poll"} |
                                     {"mode": "webhook", "url", "secret", "includeProgress"}} -> 202 with the
                                     job view, "job_token" and Location; PAYMENT-RESPONSE says
                                     settlement_deferred (or carries the transaction when settled on accept)
                                     The same request resent with the same payment (a lost 202) gets that
                                     job's 202 again, with Idempotent-Replayed: true; nothing new is created
  GET  /jobs/{id}                    status, progress, status_text, timings, result + signed result link,
                                     failure {category, code, message, step}, notices, payment {challenge_id,
                                     nonce, tx_hash, payer, settlement_status, receipt_url}; receipt_url is
                                     the facilitator's /receipt/{tx_hash}?nonce={nonce} (a batched
                                     settlement's transaction carries several payments)
  GET  /jobs/{id}/events             Server-Sent Events (id = event id; Last-Event-ID or ?lastEventId resumes)
  GET  /jobs/{id}/result             the artifact (audio/wav); or ?expires=&sig= without credentials
  POST /jobs/{id}/webhook/redeliver  replay the final webhook event under its original event id
  GET  /health                       database, queue, every provider's readiness (degraded shown, 200)

Refusals before payment: bad input 400/404 with a precise `error`, a full queue 503 + Retry-After, and
once a payment names its payer, that payer's concurrency 429 + Retry-After or an authorization too short
for the job 400; none of these issues a challenge or touches the payment.

Access: a job is visible with its token (X-Job-Token or ?token=) or to its payer (X-Job-Auth: <unix ts>.
<EIP-191 signature of "x402-job:<id>:<ts>">); there is no listing, and unknown and hidden jobs get the same
404.

Payment: by default (`deferred`) the payment is verified and held when the job is accepted, settled by the
worker's settlement hook when the job completes, released when it fails, is canceled or runs past its
deadline (the tool's longest job; the requirements' maxTimeoutSeconds covers it plus a settlement margin).
X402_RS_GENERATION_SETTLE_ON_ACCEPT lists tools settled on acceptance instead. A paid result is handed
out once its payment is settled (or confirming).

Modules:
  service.py     GenerationApi: what the app mounts (terms, backend, secret, the /generate endpoint, routes)
  handlers.py    the HTTP endpoints
  endpoint.py    POST /generate as a priced endpoint of the payment middleware (admission before payment)
  replay.py      the same payment sent again (its 202 lost): the job it created, if the request is the same
  offers.py      a tool's quote as an x402 route and quote; payment windows (pure)
  payments.py    the worker's settlement hook: settle completed jobs' payments, release the others
  access.py      job tokens, signed result links, payer signatures (pure)
  parsing.py     request parsing and input validation (pure)
  catalogue.py   GET /tools descriptions (pure)
  views.py       GET /jobs/{id} (pure)
  sse.py         the events stream
  backend.py     the engine's pool, workers and webhook dispatcher (also the `worker` command's)
  settings.py    X402_RS_GENERATION_* settings
"""
