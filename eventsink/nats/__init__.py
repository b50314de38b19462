"""NATS JetStream: the shared connection handling (``connection``) and the consumer behind
``eventsink consume`` (``consumer``). Needs the ``nats`` extra.
"""
