"""The AWS engine: CDK stack, Lambda handlers, the Step Functions driver that starts and
watches executions, and an offline emulator of the same state machine.

    names.py         names every piece shares (prefixes, limits, environment); no CDK
    stack_config.py  StackConfig: what `stepmap deploy` fixes, validated; no CDK
    stack.py         the CDK constructs (imports aws_cdk)
    asl.py           the rendered state machine definition, and reading one back
    asset.py         the Lambda code asset (the package, staged)
    templates.py     synthesized templates, cached by content across processes
    handlers.py      the Lambda entry points
    driver.py        runs, watches and resumes executions (aws, aws-emulated)
    target.py        the state machine, bucket and deployed policy; clients, region, errors
    fetch.py         the map runs' results kept with the run; what a resume has left
    outcome.py       an execution's end as a RunReport and the updated run record
    state.py         what run.json keeps for an AWS run (key "aws")
    emulator.py      moto's interpreter running the synthesized state machine in-process
    commands.py      the CLI's synth / deploy / destroy
"""

from .names import DEFAULT_STACK

__all__ = ["DEFAULT_STACK"]
