"""The AWS engine: CDK stack, Lambda handlers, the client that starts and watches executions,
and an offline emulator of the same state machine."""
