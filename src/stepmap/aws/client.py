"""The former home of the Step Functions driver, kept so that ``stepmap.aws.client`` imports
keep working: the driver is :mod:`stepmap.aws.driver`, the clients and targets
:mod:`stepmap.aws.target`."""

from .driver import StepFunctionsDriver, watch
from .target import MIN_POLL_SECONDS, aws_errors, stack_outputs

__all__ = ["StepFunctionsDriver", "watch", "MIN_POLL_SECONDS", "aws_errors", "stack_outputs"]
