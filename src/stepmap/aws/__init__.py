"""The AWS engine: CDK stack, Lambda handlers, the client that starts and watches executions,
and an offline emulator of the same state machine."""

#: The CloudFormation stack `stepmap deploy` creates unless told otherwise.
DEFAULT_STACK = "stepmap"
