"""The Notion sink: finished uploads drain to the Notion File Upload API in parts.

Only ``client`` touches the network; part arithmetic, the retry policy, the
circuit breaker and the rate limiter are pure and take their clocks as arguments.
"""
