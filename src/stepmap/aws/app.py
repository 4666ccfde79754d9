"""The CDK app the CDK CLI runs (see cdk.json): ``cdk synth`` / ``cdk deploy`` work as usual.

Settings come from context: ``-c stepmap='{"workload": "s3keys", "batch_size": 100}'`` (the
fields of :class:`stepmap.aws.stack_config.StackConfig`) and ``-c stepmap:stack-name=NAME``;
``stepmap deploy`` passes both.
"""

from __future__ import annotations

from .names import CONTEXT_KEY, DEFAULT_STACK
from .stack import StepmapStack, add_nag_checks, new_app
from .stack_config import StackConfig


def main() -> None:
    app = new_app()
    config = StackConfig.from_context(app.node.try_get_context(CONTEXT_KEY))
    name = app.node.try_get_context(f"{CONTEXT_KEY}:stack-name") or DEFAULT_STACK
    StepmapStack(app, name, config=config)
    add_nag_checks(app)
    app.synth()


if __name__ == "__main__":
    main()
