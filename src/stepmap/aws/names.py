"""The names the AWS pieces share: the stack, the Lambda handlers, the driver and the estimate.

Plain constants only (no CDK, no boto3), so any of them can import this module cheaply.

    results bucket
      items/<run-or-request>.json     item lists the map reads with its S3 ItemReader
      outputs/<request-id>.json       compute outputs too large for the state payload
      process_output/<map-run-id>/    the ResultWriter's manifest.json + result files
"""

from __future__ import annotations

#: The CloudFormation stack `stepmap deploy` creates unless told otherwise.
DEFAULT_STACK = "stepmap"
#: CDK context key holding the StackConfig as JSON (``-c stepmap='{...}'``).
CONTEXT_KEY = "stepmap"

# ---------------------------------------------------------------- bucket prefixes
RESULTS_PREFIX = "process_output"
ITEMS_PREFIX = "items"
OUTPUTS_PREFIX = "outputs"

# ---------------------------------------------------------------- function environment
WORKLOAD_ENV = "STEPMAP_WORKLOAD"
BUCKET_ENV = "STEPMAP_BUCKET"
ITEM_SOURCE_ENV = "STEPMAP_ITEM_SOURCE"
DEFAULT_WORKLOAD = "s3keys"

# ---------------------------------------------------------------- payload limits
#: Step Functions caps a state's input/output at 256 KiB. Start output above this goes to
#: S3 (the map state's output, start output plus $.results, must fit too).
INLINE_START_BYTES = 200 * 1024
#: A child execution's output (and the reduce output) is capped at 256 KiB too.
INLINE_OUTPUT_BYTES = 200 * 1024
#: The key of an offloaded output's pointer; no workload result looks like this.
POINTER_KEY = "__stepmap_s3__"

# ---------------------------------------------------------------- events
#: The execution-input key stepmap's driver uses to hand the start step an item list it
#: uploaded (``--items-from``, resume) and earlier map runs' results. No workload may take a
#: parameter of this name.
CONTROL_KEY = "stepmap"
#: Each child item's position in the run's item stream (``$$.Map.Item.Index``, or the
#: position an uploaded item list names): the reduce step checks exactly-once on these.
POSITION_KEY = "position"

# ---------------------------------------------------------------- retry policy
#: The compute task's retry of a workload's own error, as the local engine's defaults.
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_SECONDS = 0.5
BACKOFF_RATE = 2.0
