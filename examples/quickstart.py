"""Write a few events to stdout and to a JSON-lines file through eventsink's pipeline."""

import eventsink

with eventsink.Client(
    sinks=[{"type": "stdout"}, {"type": "file", "path": "events.jsonl"}],
    outbox=":memory:",
    instance="quickstart",
) as client:
    for number in range(3):
        client.write("greetings", {"number": number, "text": f"hello #{number}"})

print("wrote 3 events; see events.jsonl")
