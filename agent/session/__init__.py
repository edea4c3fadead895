"""Sans-I/O state machines: they take input and the time, and hand back what to send."""
