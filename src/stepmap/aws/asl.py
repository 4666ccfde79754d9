"""The state machine's ASL, rendered from a synthesized template, and read back.

``state_machine_definition`` fills in the template's CloudFormation references (function
ARNs, bucket, partition) so validators and the emulator get plain ASL; ``deployed_settings``
reads from a definition (rendered here, or DescribeStateMachine's) what the deployed stack
fixes: the retry policy, tolerance, batching, concurrency and the results bucket. No CDK.
"""

from __future__ import annotations

import json

from .names import RESULTS_PREFIX

PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_REGION = "us-east-1"


def state_machine_definition(template: dict, *, bucket: str, function_arn=None,
                             region: str = PLACEHOLDER_REGION,
                             account: str = PLACEHOLDER_ACCOUNT) -> dict:
    """The ASL of the template's state machine with its CloudFormation references filled in
    (function ARNs, bucket name, partition...), for validators and the offline emulator."""
    resources = template["Resources"]
    machine = next(r for r in resources.values() if r["Type"] == "AWS::StepFunctions::StateMachine")
    function_arn = function_arn or (lambda logical_id: placeholder_function_arn(
        logical_id, region=region, account=account))

    def value(node):
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return separator.join(value(p) for p in parts)
        if isinstance(node, dict) and "Ref" in node:
            ref = node["Ref"]
            pseudo = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
                      "AWS::URLSuffix": "amazonaws.com"}
            if ref in pseudo:
                return pseudo[ref]
            if resources.get(ref, {}).get("Type") == "AWS::S3::Bucket":
                return bucket
        if isinstance(node, dict) and "Fn::GetAtt" in node:
            logical_id, attribute = node["Fn::GetAtt"]
            if attribute == "Arn" and resources[logical_id]["Type"] == "AWS::Lambda::Function":
                return function_arn(logical_id)
        raise ValueError(f"cannot render {json.dumps(node)[:120]} in the state machine definition")

    return json.loads(value(machine["Properties"]["DefinitionString"]))


def placeholder_function_arn(logical_id: str, *, region: str = PLACEHOLDER_REGION,
                             account: str = PLACEHOLDER_ACCOUNT) -> str:
    return f"arn:aws:lambda:{region}:{account}:function:stepmap-{logical_id}"


def stepmap_functions(template: dict) -> dict[str, dict]:
    """Logical id -> properties of every stepmap Lambda function in the template."""
    return {logical_id: resource["Properties"] for logical_id, resource
            in template["Resources"].items() if resource["Type"] == "AWS::Lambda::Function"
            and str(resource["Properties"].get("Handler", "")).startswith("stepmap.aws.handlers.")}


def map_states(definition: dict) -> dict[str, dict]:
    """Name -> state of every Distributed Map state at the top level of a definition."""
    return {name: state for name, state in definition.get("States", {}).items()
            if state.get("Type") == "Map"}


def deployed_settings(definition: dict) -> dict:
    """What a deployed state machine fixes, as stepmap's policy names, read from its ASL:
    ``retries`` / ``backoff_seconds`` (the compute task's States.ALL retrier), ``tolerate``,
    ``tolerate_count``, ``batch_size``, ``max_concurrency`` and the results ``bucket``."""
    maps = map_states(definition)
    if not maps:
        return {}
    state = next(iter(maps.values()))
    settings = {"retries": 0, "backoff_seconds": None,
                "tolerate": float(state.get("ToleratedFailurePercentage", 0)),
                "tolerate_count": int(state.get("ToleratedFailureCount", 0)),
                "batch_size": int(state.get("ItemBatcher", {}).get("MaxItemsPerBatch", 0)),
                "max_concurrency": int(state.get("MaxConcurrency", 0)),
                "bucket": state.get("ResultWriter", {}).get("Parameters", {}).get("Bucket")}
    processor = state.get("ItemProcessor") or state.get("Iterator") or {}
    for task in processor.get("States", {}).values():
        for retrier in task.get("Retry", []):
            if retrier.get("ErrorEquals") == ["States.ALL"]:
                settings.update(retries=int(retrier.get("MaxAttempts", 3)),
                                backoff_seconds=float(retrier.get("IntervalSeconds", 1)))
    return settings


def results_prefix(definition: dict) -> str:
    """The ResultWriter's prefix (``process_output`` for stepmap's stacks)."""
    for state in map_states(definition).values():
        prefix = state.get("ResultWriter", {}).get("Parameters", {}).get("Prefix")
        if isinstance(prefix, str):
            return prefix.strip("/")
    return RESULTS_PREFIX
