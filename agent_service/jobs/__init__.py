"""Jobs: names, payloads, the msgpack serializer, live events, retry policy, queue helpers."""
