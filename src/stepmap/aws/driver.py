"""The Step Functions driver of the aws and aws-emulated engines (registered in
:mod:`stepmap.drivers`); it lives in :mod:`stepmap.aws.client` beside the calls it makes."""

from .client import StepFunctionsDriver

__all__ = ["StepFunctionsDriver"]
