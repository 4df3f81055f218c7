"""`plantpulse notify`: delivers incident transitions from the `incidents` topic by a routing file.

- `routing`: the routing file (channels, routes) and which channels a transition goes to.
- `messages`: what a notification says (text, webhook JSON, Slack blocks, e-mail).
- `channels`: the senders (webhook, Slack, e-mail, log) and how their errors are classified.
- `ledger`: the SQLite delivery ledger (dedup by (key, channel), consumed offsets, open incidents).
- `worker`: one thread per channel: rate limit, retries with backoff, dead letters.
- `service`: the consume loop, reminders and the clean stop.

Nothing imports this package except the CLI.
"""
