"""What clients and backends exchange, as data: OpenAI request models, SSE framing, the answer a request
got, streamed answers reassembled, structured-output checks, and the request headers the gateway reads.
No I/O here."""
