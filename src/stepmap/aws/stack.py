"""The CDK stack: start Lambda -> Distributed Map of compute Lambdas -> reduce Lambda.

    Start ──► ItemsInS3? ──false──► MapInline  (items from $.items)          ──┐
                  └──────true───► MapFromS3  (S3JsonItemReader $.items_key) ──┴─► Reduce

or, deployed with an item source (``--item-source s3://bucket/prefix/``):

    Start ──► MapFromListing (S3ObjectsItemReader: ListObjectsV2 by Step Functions) ──► Reduce

where the start step only validates the run input and supplies the params (``item_count``
is null: the reduce step then trusts the map run's ResultWriter manifest, see reducer.py).
Optionally (``--efs-file-system ... --vpc ...``) the start and compute functions run in an
existing VPC and mount an existing EFS access point; everything is imported by ID, so synth
stays offline.

Each Distributed Map runs STANDARD child executions of one compute task, writes every
child's input/output with ResultWriterV2 under ``process_output/`` in the results bucket and
puts the writer's details at ``$.results``; the reduce Lambda reads them back from S3 and
refuses to produce a total unless every item succeeded.

The child event is ``{"index": <item>, "position": <its place in the item stream>,
"params": <the start step's params>}`` (or, with an ItemBatcher, ``{"Items": [{"index": ...,
"position": ...}], "BatchInput": {"params": ...}}``): JSONPath cannot spread an object whose
keys are only known at run time into the selector, so the compute handler unwraps
``params`` into the job contract's flat event (see handlers.py). The position is
``$$.Map.Item.Index`` for the inline and listing maps; an item list in S3 holds
``{"index", "position"}`` objects (so that a resume can run a subset of the items under their
original positions), and the reduce step checks every position is covered exactly once. A
long range's list in S3 holds sub-ranges, ``{"index": {"Range": [v0, v1]}, "position": [p0,
p1]}`` (subranges.py): the same selector passes them on unchanged.

The compute task retries Lambda's throttling and service errors, and then ANY error
(States.ALL: a workload's own exception too) ``retries`` times from ``backoff_seconds`` with
BackoffRate 2 and full jitter, as the local engine retries a failed call. The reduce step
gets ``$.previous``: earlier map runs' ResultWriter details, when a resume runs only the
items those left unfinished (see driver.py).

Everything here is plain aws-cdk-lib v2; cdk-nag (v3, a policy-validation plugin) checks it
with AwsSolutions, and every finding it would raise is acknowledged below with a reason.
"""

from __future__ import annotations

import os

# jsii prints a page-wide banner about Node 20's end of life on every start; not actionable
# for a stepmap user, so silence it (before aws_cdk starts the jsii runtime)
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_ec2 as ec2  # noqa: E402
from aws_cdk import aws_efs as efs  # noqa: E402
from aws_cdk import aws_iam as iam  # noqa: E402
from aws_cdk import aws_lambda as lambda_  # noqa: E402
from aws_cdk import aws_logs as logs  # noqa: E402
from aws_cdk import aws_s3 as s3  # noqa: E402
from aws_cdk import aws_stepfunctions as sfn  # noqa: E402
from aws_cdk import aws_stepfunctions_tasks as tasks  # noqa: E402
from constructs import Construct  # noqa: E402

from .asset import COMPLETE_MARKER, stage_package  # noqa: E402
from .names import (CONTEXT_KEY, DEFAULT_STACK, ITEM_SOURCE_ENV, ITEMS_PREFIX,  # noqa: E402
                    OUTPUTS_PREFIX, POSITION_KEY, RESULTS_PREFIX, BACKOFF_RATE)
from .stack_config import LATEST_RUNTIME, StackConfig  # noqa: E402

#: Without this flag ``result_writer_v2`` renders nothing at all (no error, no writer).
RESULT_WRITER_V2_FLAG = "@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2"
DEFAULT_STACK_NAME = DEFAULT_STACK
RUNTIMES = {"python3.12": lambda_.Runtime.PYTHON_3_12, "python3.13": lambda_.Runtime.PYTHON_3_13,
            "python3.14": lambda_.Runtime.PYTHON_3_14}
__all__ = ["CONTEXT_KEY", "DEFAULT_STACK_NAME", "StackConfig", "StepmapStack", "build",
           "new_app", "add_nag_checks", "synth_template"]


def new_app(**app_options) -> cdk.App:
    """Every App stepmap builds carries the ResultWriterV2 flag (or the writer vanishes)."""
    context = {RESULT_WRITER_V2_FLAG: True, **app_options.pop("context", {})}
    return cdk.App(context=context, **app_options)


def add_nag_checks(app: cdk.App) -> None:
    from cdk_nag import AwsSolutionsChecks
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))


class StepmapStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig,
                 **kwargs) -> None:
        super().__init__(scope, construct_id, description="stepmap: start -> Distributed Map "
                         f"-> reduce for workload {config.workload}", **kwargs)
        self.config = config
        self.bucket = self._bucket()
        code = lambda_.Code.from_asset(str(stage_package(
            config.workload, requirements=config.requirements, runtime=config.runtime)),
                                       exclude=[COMPLETE_MARKER])
        env = {"STEPMAP_WORKLOAD": config.workload, "STEPMAP_BUCKET": self.bucket.bucket_name}
        if config.item_source:
            env[ITEM_SOURCE_ENV] = config.item_source  # the start step checks the run input
        # the start step mounts the file system too: a workload's start may create or check
        # directories there (s3copy creates its dest), and /mnt is read-only without it
        self.network = self._network() if config.efs else None
        self.start_fn = self._function("StartFunction", "start", code, env, memory=1024,
                                       seconds=300, network=self.network)
        self.compute_fn = self._function("ComputeFunction", "compute", code, env,
                                         memory=config.memory_mb, seconds=config.timeout_seconds,
                                         network=self.network)
        self.reduce_fn = self._function("ReduceFunction", "reduce", code, env,
                                        memory=config.memory_mb, seconds=config.timeout_seconds)
        # least privilege: each function may write only its own prefix
        self.bucket.grant_put(self.start_fn, f"{ITEMS_PREFIX}/*")
        self.bucket.grant_put(self.compute_fn, f"{OUTPUTS_PREFIX}/*")
        self.bucket.grant_read(self.reduce_fn)
        self.bucket.grant_put(self.reduce_fn, f"{RESULTS_PREFIX}/*")
        self.source = None
        if config.source_bucket:
            # imported by name (never looked up); read-only, and objects under the prefix only
            self.source = s3.Bucket.from_bucket_name(self, "ItemSourceBucket", config.source_bucket)
            self.source.grant_read(self.compute_fn, f"{config.source_prefix}*")
        self.state_machine = self._state_machine()
        cdk.CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn)
        cdk.CfnOutput(self, "BucketName", value=self.bucket.bucket_name)
        cdk.CfnOutput(self, "Workload", value=config.workload)
        if config.item_source:
            cdk.CfnOutput(self, "ItemSource", value=config.item_source)
        if config.efs:
            cdk.CfnOutput(self, "EfsMountPath", value=config.efs_mount_path)
        self._acknowledge_nag_findings()

    # ------------------------------------------------------------ resources
    def _bucket(self) -> s3.Bucket:
        retain = self.config.retain_bucket
        return s3.Bucket(
            self, "Results",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            removal_policy=cdk.RemovalPolicy.RETAIN if retain else cdk.RemovalPolicy.DESTROY,
            auto_delete_objects=not retain,
            # item lists and offloaded outputs are scratch; results and totals are kept
            lifecycle_rules=[
                s3.LifecycleRule(prefix=f"{ITEMS_PREFIX}/", expiration=cdk.Duration.days(30)),
                s3.LifecycleRule(prefix=f"{OUTPUTS_PREFIX}/", expiration=cdk.Duration.days(30)),
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(1)),
            ])

    def _function(self, name: str, handler: str, code, env: dict, *, memory: int,
                  seconds: int, network: dict | None = None) -> lambda_.Function:
        # an explicit log group, so `destroy` removes the logs too and they expire
        log_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.ONE_MONTH,
                                  removal_policy=cdk.RemovalPolicy.DESTROY)
        return lambda_.Function(
            self, name, runtime=RUNTIMES[self.config.runtime],
            architecture=lambda_.Architecture.ARM_64, code=code,
            handler=f"stepmap.aws.handlers.{handler}", memory_size=memory,
            timeout=cdk.Duration.seconds(seconds), environment=env, log_group=log_group,
            description=f"stepmap {handler} step ({self.config.workload})", **(network or {}))

    def _network(self) -> dict:
        """VPC, subnets, security group and EFS access point, all imported by ID: no lookup,
        no new network resource, no rule added to the imported security group."""
        cfg = self.config
        # The VPC's AZs only matter when subnets are selected by type; ours are given
        # explicitly, so the AZs (unknown offline) stay a token that is never rendered
        vpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=cfg.vpc_id,
                                          availability_zones=cdk.Fn.get_azs())
        cdk.Annotations.of(vpc).acknowledge_warning(
            "@aws-cdk/aws-ec2:vpcAttributeIsListTokenavailabilityZones", "subnets are given "
            "by ID (--subnets), so nothing selects subnets by AZ")
        subnets = []
        for n, subnet_id in enumerate(cfg.subnet_ids):
            subnet = ec2.Subnet.from_subnet_id(self, f"Subnet{n}", subnet_id)
            cdk.Annotations.of(subnet).acknowledge_warning(
                "@aws-cdk/aws-ec2:noSubnetRouteTableId", "the function only places its "
                "network interfaces in this subnet; nothing here reads or adds routes")
            subnets.append(subnet)
        group = ec2.SecurityGroup.from_security_group_id(self, "LambdaSecurityGroup",
                                                         cfg.security_group_id, mutable=False)
        file_system = efs.FileSystem.from_file_system_attributes(
            self, "EfsFileSystem", file_system_id=cfg.efs_file_system_id, security_group=group)
        access_point = efs.AccessPoint.from_access_point_attributes(
            self, "EfsAccessPoint", access_point_id=cfg.efs_access_point_id,
            file_system=file_system)
        # CDK's fromEfsAccessPoint grants ClientMount on Resource "*" (conditioned on the
        # access point); the same grants scoped to this file system leave no "*" resource,
        # and ClientWrite is held to the access point too. No connections: the security
        # group is the user's (it must already reach the mount targets on 2049).
        mounted = lambda_.FileSystem.from_efs_access_point(access_point, cfg.efs_mount_path)
        through_access_point = {"StringEquals": {
            "elasticfilesystem:AccessPointArn": access_point.access_point_arn}}
        filesystem = lambda_.FileSystem(
            arn=mounted.config.arn, local_mount_path=mounted.config.local_mount_path,
            dependency=mounted.config.dependency, policies=[iam.PolicyStatement(
                actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                resources=[file_system.file_system_arn], conditions=through_access_point)])
        return {"vpc": vpc, "vpc_subnets": ec2.SubnetSelection(subnets=subnets),
                "security_groups": [group], "filesystem": filesystem}

    # ------------------------------------------------------------ state machine
    def _state_machine(self) -> sfn.StateMachine:
        start = self._invoke("Start", self.start_fn, sfn.TaskInput.from_json_path_at("$"))
        # item_count is null when Step Functions lists the items (the start step cannot
        # know it): the reduce step then trusts the ResultWriter manifest (reducer.py)
        reduce = self._invoke("Reduce", self.reduce_fn, sfn.TaskInput.from_object({
            "results": sfn.JsonPath.object_at("$.results"),
            "item_count": sfn.JsonPath.number_at("$.item_count"),
            "previous": sfn.JsonPath.list_at("$.previous"),
            # to re-run the start and prove each result entry is this run's (verify.py)
            "execution_input": sfn.JsonPath.object_at("$$.Execution.Input")}))
        if self.source is not None:
            # no start-step listing and no 256 KiB limit: ListObjectsV2 by Step Functions
            map_listing = self._map("MapFromListing", ITEM_INDEXED, item_reader=sfn.S3ObjectsItemReader(
                bucket=self.source, prefix=self.config.source_prefix or None))
            self.map_labels = ["MapFromListing"]
            map_listing.next(reduce)
            chain = sfn.Chain.start(start).next(map_listing)
        else:
            map_inline = self._map("MapInline", ITEM_INDEXED, items_path="$.items")
            map_s3 = self._map("MapFromS3", ITEM_POSITIONED, item_reader=sfn.S3JsonItemReader(
                bucket=self.bucket, key=sfn.JsonPath.string_at("$.items_key")))
            self.map_labels = ["MapInline", "MapFromS3"]
            choice = sfn.Choice(self, "ItemsInS3?", comment="the start step put a long item "
                                "list in S3 instead of its payload (256 KiB state limit)")
            choice.when(sfn.Condition.boolean_equals("$.items_in_s3", True), map_s3)
            choice.otherwise(map_inline)
            map_s3.next(reduce)
            map_inline.next(reduce)
            chain = sfn.Chain.start(start).next(choice)
        return sfn.StateMachine(
            self, "StateMachine", state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(chain),
            comment=f"stepmap {self.config.workload}: start -> Distributed Map -> reduce")

    def _invoke(self, name: str, fn: lambda_.IFunction, payload) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(self, name, lambda_function=fn, payload=payload,
                                  output_path="$.Payload", retry_on_service_exceptions=False)
        add_lambda_retries(task)
        return task

    def _map(self, name: str, item_paths: tuple[str, str], **source) -> sfn.DistributedMap:
        cfg = self.config
        options = {}
        if cfg.tolerated_failure_percentage:
            options["tolerated_failure_percentage"] = cfg.tolerated_failure_percentage
        if cfg.tolerated_failure_count:
            options["tolerated_failure_count"] = cfg.tolerated_failure_count
        value_path, position_path = item_paths
        selector = {"index": sfn.JsonPath.string_at(value_path),
                    POSITION_KEY: sfn.JsonPath.number_at(position_path)}
        if cfg.batch_size:
            # parameters travel once per batch, not once per item
            # (a literal "params.$": a JsonPath token inside BatchInput does not render)
            options["item_batcher"] = sfn.ItemBatcher(
                max_items_per_batch=cfg.batch_size, batch_input={"params.$": "$.params"})
        else:
            selector["params"] = sfn.JsonPath.object_at("$.params")
        dmap = sfn.DistributedMap(
            self, name, item_selector=selector, max_concurrency=cfg.max_concurrency,
            map_execution_type=sfn.StateMachineType.STANDARD,
            result_writer_v2=sfn.ResultWriterV2(bucket=self.bucket, prefix=RESULTS_PREFIX),
            result_path="$.results", label=name, **source, **options)
        compute = self._invoke(f"Compute{name[3:]}", self.compute_fn,
                               sfn.TaskInput.from_json_path_at("$"))
        add_workload_retry(compute, cfg)
        # Mode DISTRIBUTED and ExecutionType STANDARD are rendered from the DistributedMap
        # itself (map_execution_type); a ProcessorConfig here would only draw a CDK warning
        dmap.item_processor(compute)
        return dmap

    # ------------------------------------------------------------ cdk-nag
    def _acknowledge_nag_findings(self) -> None:
        """Every AwsSolutions finding, acknowledged one by one (cdk-nag v3 matches granular
        IAM5/IAM4 findings by their exact text, so a blanket rule id would not cover them)."""
        bucket, machine = self._logical_id(self.bucket), self._logical_id(self.state_machine)
        ack = _acknowledge
        ack(self.bucket, "AwsSolutions-S1", "results are written and read only by this stack's "
            "own roles; S3 server access logs would need a second bucket that outlives destroy")
        for fn, prefix in ((self.start_fn, ITEMS_PREFIX), (self.compute_fn, OUTPUTS_PREFIX),
                           (self.reduce_fn, RESULTS_PREFIX)):
            ack(fn, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                "service-role/AWSLambdaBasicExecutionRole]", "the AWS-managed basic execution "
                "policy only lets the function write its own CloudWatch logs")
            ack(fn, f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{prefix}/*]",
                f"writes objects under {prefix}/ whose keys are only known at run time "
                "(item lists, offloaded outputs, large totals)")
            ack(fn, "AwsSolutions-IAM5[Action::s3:Abort*]", "grant_put adds AbortMultipartUpload "
                "so an interrupted large upload can be cleaned up; scoped to the prefix above")
        for finding, why in [
            ("Action::s3:GetBucket*", "grant_read: bucket metadata, this bucket only"),
            ("Action::s3:GetObject*", "grant_read: object reads (with versions), this bucket only"),
            ("Action::s3:List*", "grant_read: listing this bucket's result files"),
            (f"Resource::<{bucket}.Arn>/*", "reduce reads the manifest and every result file of "
             "a map run; Step Functions chooses their keys at run time"),
        ]:
            ack(self.reduce_fn, f"AwsSolutions-IAM5[{finding}]", why)
        for fn in (self.start_fn, self.compute_fn, self.reduce_fn):
            ack(self.state_machine, f"AwsSolutions-IAM5[Resource::<{self._logical_id(fn)}"
                ".Arn>:*]", "lambda:InvokeFunction on this function's versions/aliases, as "
                "CDK's LambdaInvoke grants it")
        ack(self.state_machine, f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::<{bucket}"
            ">/*]", "ResultWriter writes" + ("" if self.source else " and ItemReader reads")
            + " objects of the results bucket under keys chosen at run time")
        if self.source is not None:
            self._acknowledge_item_source()
        if self.network is not None:
            for fn in (self.start_fn, self.compute_fn):
                ack(fn, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                    "service-role/AWSLambdaVPCAccessExecutionRole]", "CDK adds this AWS-managed "
                    "policy to a function in a VPC: Lambda needs it to create, describe and "
                    "delete the network interfaces in --subnets (ec2:*NetworkInterface* only)")
        execution = ("arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
                     '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"' + machine + '"}]}]}')
        for suffix in (":*", *(f"/{label}:*" for label in self.map_labels)):
            ack(self.state_machine, f"AwsSolutions-IAM5[Resource::{execution}{suffix}]",
                "a Distributed Map describes and stops its own child executions, whose names "
                "are generated at run time")
        if self.config.runtime != LATEST_RUNTIME:
            for fn in (self.start_fn, self.compute_fn, self.reduce_fn):
                ack(fn, "AwsSolutions-L1", f"{self.config.runtime} was chosen explicitly at "
                    "deploy time (--runtime); it is still a supported Lambda runtime")
        ack(self.state_machine, "AwsSolutions-SF1", "logging ALL events costs per state "
            "transition, and a Distributed Map of a million items makes millions; failures are "
            "visible in the execution history and the ResultWriter files")
        ack(self.state_machine, "AwsSolutions-SF2", "X-Ray traces every child execution at a "
            "per-trace price; not worth it for a batch job")

    def _acknowledge_item_source(self) -> None:
        """The compute function's read grant on the --item-source bucket (imported by name)."""
        cfg = self.config
        where = f"s3://{cfg.source_bucket}/{cfg.source_prefix}"
        for finding, why in [
            ("Action::s3:GetObject*", f"grant_read: the workload copies the objects under "
             f"{where} (GetObject, HeadObject for multipart part sizes); read-only"),
            ("Action::s3:GetBucket*", f"grant_read: metadata of the item source bucket "
             f"{cfg.source_bucket} only; read-only"),
            ("Action::s3:List*", f"grant_read: listing the item source bucket {cfg.source_bucket} "
             "only; read-only"),
            (f"Resource::arn:<AWS::Partition>:s3:::{cfg.source_bucket}/{cfg.source_prefix}*",
             f"the objects under {where}: the listing (Step Functions' ItemReader) chooses "
             "them at run time"),
        ]:
            _acknowledge(self.compute_fn, f"AwsSolutions-IAM5[{finding}]", why)

    def _logical_id(self, construct) -> str:
        resource = construct.node.default_child
        return self.resolve(self.get_logical_id(resource))


def _acknowledge(scope, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


#: (item value, item position) JSONPaths of a map's child: a plain item and its map index,
#: or a ``{"index", "position"}`` object of an item list in S3
ITEM_INDEXED = ("$$.Map.Item.Value", "$$.Map.Item.Index")
ITEM_POSITIONED = ("$$.Map.Item.Value.index", f"$$.Map.Item.Value.{POSITION_KEY}")


def add_lambda_retries(task: sfn.TaskStateBase) -> None:
    """Throttling is expected when thousands of children start at once: retry it patiently.
    Other transient Lambda service errors get a shorter retry."""
    task.add_retry(errors=["Lambda.TooManyRequestsException"], interval=cdk.Duration.seconds(1),
                   max_attempts=10, backoff_rate=2, max_delay=cdk.Duration.seconds(60),
                   jitter_strategy=sfn.JitterType.FULL)
    task.add_retry(errors=["Lambda.ServiceException", "Lambda.AWSLambdaException",
                           "Lambda.SdkClientException", "Lambda.ClientExecutionTimeoutException"],
                   interval=cdk.Duration.seconds(2), max_attempts=6, backoff_rate=2,
                   jitter_strategy=sfn.JitterType.FULL)


def add_workload_retry(task: sfn.TaskStateBase, config: StackConfig) -> None:
    """Any other error, a workload's own exception included, is retried as the local engine
    retries a failed call: ``retries`` times, from ``backoff_seconds`` (in whole seconds, at
    least 1: Step Functions' unit), doubling, full jitter, capped at 30 s. It comes last:
    Step Functions uses the first retrier whose ErrorEquals matches."""
    if config.retries:
        task.add_retry(errors=["States.ALL"], max_attempts=config.retries,
                       interval=cdk.Duration.seconds(config.retry_interval_seconds),
                       backoff_rate=BACKOFF_RATE, max_delay=cdk.Duration.seconds(30),
                       jitter_strategy=sfn.JitterType.FULL)


def synth_template(config: StackConfig, *, stack_name: str = DEFAULT_STACK_NAME,
                   outdir: str | None = None, nag: bool = True) -> dict:
    """Synthesize one stack (and run cdk-nag over it) and return its CloudFormation template."""
    app, _ = build(config, stack_name=stack_name, nag=nag, outdir=outdir)
    return app.synth().get_stack_by_name(stack_name).template


def build(config: StackConfig, *, stack_name: str = DEFAULT_STACK_NAME, nag: bool = True,
          **app_options) -> tuple[cdk.App, StepmapStack]:
    app = new_app(**app_options)
    stack = StepmapStack(app, stack_name, config=config)
    if nag:
        add_nag_checks(app)
    return app, stack

