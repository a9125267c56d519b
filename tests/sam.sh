#!/usr/bin/env bash
# SAM checks, offline and without Docker:
#   1. cfn-lint on template.yaml (errors, warnings and informational rules);
#   2. `sam validate --lint`;
#   3. the template under non-default parameter values: each set in PARAMETER_SETS below is
#      checked against the parameters' own constraints and the template's Rules, rendered to a
#      copy of the template with its Defaults swapped for the set's values (cfn-lint resolves a
#      Ref to its parameter's Default; its --parameters option is dropped by the SAM transform
#      in cfn-lint 1.58), and each copy goes through cfn-lint and `sam validate --lint`;
#   4. for the defaults and every set, the template as CloudFormation would resolve it:
#      FUNCTION_TIMEOUT_S is each function's Timeout, the worker's timeout covers the worst
#      case of one job (the sum in template.yaml), the worker's reservation and the
#      orchestrator's WORKER_FUNCTION_CONCURRENCY_CAP or WORKER_CONCURRENCY_CAP, queue retention, redrive and age alarms, the
#      worker's asynchronous settings, the orchestrator's own ARN, the credential's
#      permissions, alarm actions, and DynamoDB permissions scoped by dynamodb:LeadingKeys;
#   5. events/: every sample is JSON, jobs.jsonl holds 20 jobs with relative paths;
#   6. `sam build --beta-features` (options from samconfig.toml: cached, parallel), which runs
#      `cargo lambda build --release --arm64 --bin <Binary>` with zig as the cross linker;
#      with a pool of two worker functions (WorkerFunctionCount=2);
#   7. the bootstraps of OrchestratorFunction, WorkerFunction and WorkerFunction2 (in the
#      directories the built template names: the workers share one) exist and are aarch64 ELF
#      executables (read from the ELF header: `file` may be absent).
#
# Usage: bash tests/sam.sh [--no-build]
# Needs the tools tests/setup.sh installs into .venv (aws-sam-cli, cfn-lint, cargo-lambda, ziglang)
# and the rustup target aarch64-unknown-linux-gnu.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${QO_VENV:-$REPO/.venv}"
export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# cargo-lambda (cargo-zigbuild) runs `$CARGO_ZIGBUILD_PYTHON_PATH -m ziglang` to find zig.
export CARGO_ZIGBUILD_PYTHON_PATH="${CARGO_ZIGBUILD_PYTHON_PATH:-$VENV/bin/python3}"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h | --help)
      sed -n '2,24p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "sam.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf 'sam.sh: %s\n' "$*"; }
die() {
  printf 'sam.sh: ERROR: %s\n' "$*" >&2
  exit 1
}
CHECKED=()
ok() {
  say "ok: $*"
  CHECKED+=("$*")
}

start=$SECONDS
for exe in sam cfn-lint cargo-lambda zig python3; do
  [[ -x "$VENV/bin/$exe" ]] || die "$VENV/bin/$exe is missing: run bash tests/setup.sh"
done
[[ -f template.yaml && -f samconfig.toml ]] || die "template.yaml or samconfig.toml is missing"

# 1. cfn-lint: exit status is a bit mask (2 error, 4 warning, 8 informational); any is a failure.
say "cfn-lint $(cfn-lint --version | awk '{print $2}') template.yaml"
cfn-lint --include-checks I -- template.yaml
ok "cfn-lint: no errors, warnings or informational findings"

# 2. sam validate --lint (runs cfn-lint through SAM's own pinned rules).
say "$(sam --version): sam validate --lint"
sam validate --lint
ok "sam validate --lint: valid"

# 3, 4 and 5. Parameter sets, the resolved template and the event samples, read with
# cfn-lint's YAML loader (it knows the short-form intrinsics such as !Ref). The rendered copies
# go to $RENDERED, one <set>.json each, linted below.
RENDERED="$(mktemp -d "${TMPDIR:-/tmp}/qo-sam.XXXXXX")"
trap 'rm -rf "$RENDERED"' EXIT
"$VENV/bin/python3" - "$RENDERED" <<'PY'
import json
import pathlib
import re
import sys

from cfnlint.decode import decode

RENDERED = pathlib.Path(sys.argv[1])

# Non-default parameter values CI checks besides the defaults. Each must be a deployment a
# user could make: its values are checked against the parameters' constraints and the Rules.
PARAMETER_SETS = {
    # A small account: no retry queue, no worker reservation, the credential in Secrets
    # Manager under a customer managed key, alarms by e-mail, the shortest event age.
    "small-account": {
        "ApiBaseUrl": "https://api.example.com/v1",
        "EnableRetryQueue": "false",
        "WorkerConcurrency": 0,
        "UnreservedWorkerCap": 5,
        "ApiKeySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:quota-orchestrator/api-key-AbCdEf",
        "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "AlarmEmail": "ops@example.com",
        "QuotaSpec": "10/s,500/min,20000/day,300000/month",
        "BudgetMode": "spread",
        "MaxReceiveCount": 4,
        "WorkerMaxEventAgeSeconds": 60,
        "OrchestratorTimeout": 600,
        "QueueAgeAlarmSeconds": 86400,
    },
    # A large reservation, the credential in Parameter Store, a slow API with longer timeouts,
    # Lambda's longest event age.
    "parameter-store": {
        "ApiBaseUrl": "https://api.example.com",
        "ApiKeyParameterName": "/quota-orchestrator/api-key",
        "WorkerConcurrency": 200,
        "ApiConnectTimeoutMs": 1000,
        "ApiReadTimeoutMs": 30000,
        "WorkerTimeout": 180,
        "WorkerMaxEventAgeSeconds": 21600,
        "WorkerThrottleAlarmThreshold": 10,
        "WorkerAsyncEventAgeAlarmMs": 5000,
        "LogRetentionDays": 7,
        "AdaptivePacing": "off",
        "WorkerSystemLogLevel": "WARN",
        "WorkerBusyMs": 30000,
        "OrchestratorMemorySize": 512,
    },
}
# A pool of worker functions, each in its own subnets (its own NAT address).
PARAMETER_SETS["pool-in-subnets"] = {
    "ApiBaseUrl": "https://api.example.com",
    "QuotaSpec": "20/s,500/min,8/s per function",
    "WorkerFunctionCount": 3,
    "WorkerSecurityGroupIds": "sg-0123456789abcdef0",
    "WorkerSubnetIds1": "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002",
    "WorkerSubnetIds2": "subnet-0a1b2c3d4e5f60003",
    # The third function uses Lambda's own addresses.
}
# The largest pool, no subnets.
PARAMETER_SETS["pool-of-four"] = {"ApiBaseUrl": "https://api.example.com", "WorkerFunctionCount": 4}
# Named producers only, no response excerpt in dead letters, an API that takes idempotency keys.
PARAMETER_SETS["named-producers"] = {
    "ApiBaseUrl": "https://api.example.com",
    "ProducerPrincipals": "arn:aws:iam::123456789012:role/orders,arn:aws:iam::123456789012:role/ops",
    "WorkerFunctionCount": 2,
    "ResponseExcerptBytes": 0,
    "IdempotencyKeyHeader": "Idempotency-Key",
    "AllowedMethods": "GET,POST",
    "AllowedPathPrefixes": "/v1/customers/,/v1/orders",
}
# Results to one destination of each kind, a FIFO queue among them, with a default.
PARAMETER_SETS["results"] = {
    "ApiBaseUrl": "https://api.example.com",
    "ResultQueueArns": "arn:aws:sqs:us-east-1:123456789012:orders,arn:aws:sqs:us-east-1:123456789012:replies.fifo",
    "ResultTopicArns": "arn:aws:sns:us-east-1:123456789012:alerts",
    "ResultBusArns": "arn:aws:events:us-east-1:123456789012:event-bus/billing",
    "ResultFunctionArns": "arn:aws:lambda:us-east-1:123456789012:function:after-call:live",
    "DefaultResultDestination": "orders",
    "WorkerFunctionCount": 2,
    "ResultHeaders": "Content-Type,X-Request-Id,ETag",
    "ResultBodyMaxBytes": 65536,
}
# Values for the defaults' check: ApiBaseUrl has no default.
REQUIRED_FOR_DEFAULTS = {"ApiBaseUrl": "https://api.example.com"}
PSEUDO = {
    "AWS::StackName": "quota-orchestrator",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()


def fail(msg):
    sys.exit(f"sam.sh: ERROR: {msg}")


tpl, errors = decode("template.yaml")
if errors:
    fail(f"template.yaml: {errors}")
params = tpl["Parameters"]


def check_constraints(name, values):
    """The set is a deployment CloudFormation accepts: known names, each value within its
    parameter's constraints."""
    for key, value in values.items():
        p = params.get(key)
        if p is None:
            fail(f"parameter set {name}: unknown parameter {key}")
        text = str(value)
        if "AllowedValues" in p and text not in [str(v) for v in p["AllowedValues"]]:
            fail(f"parameter set {name}: {key}={text} is not one of {p['AllowedValues']}")
        if "AllowedPattern" in p and not re.fullmatch(p["AllowedPattern"], text):
            fail(f"parameter set {name}: {key}={text} does not match {p['AllowedPattern']}")
        if "MinLength" in p and len(text) < int(p["MinLength"]):
            fail(f"parameter set {name}: {key}={text} is shorter than {p['MinLength']}")
        if p.get("Type") == "Number":
            n = float(text)
            if "MinValue" in p and n < float(p["MinValue"]):
                fail(f"parameter set {name}: {key}={text} is below MinValue {p['MinValue']}")
            if "MaxValue" in p and n > float(p["MaxValue"]):
                fail(f"parameter set {name}: {key}={text} is above MaxValue {p['MaxValue']}")


class Resolved:
    """The template as CloudFormation resolves it for one set of parameter values: conditions
    evaluated, Fn::If chosen, AWS::NoValue dropped, Refs and Subs of parameters and pseudo
    parameters substituted; a resource's Ref or GetAtt stays symbolic (`<Name>`, `<Name.Attr>`)."""

    def __init__(self, values):
        self.values = {k: p.get("Default") for k, p in params.items()}
        self.values.update(values)
        missing = [k for k, v in self.values.items() if v is None]
        if missing:
            fail(f"no value for parameters {missing}")
        self.conditions = {}
        for name in tpl.get("Conditions", {}):
            self.condition(name)
        self.resources = {
            name: self.value(res)
            for name, res in tpl["Resources"].items()
            if "Condition" not in res or self.condition(res["Condition"])
        }

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(tpl["Conditions"][name]))
        return self.conditions[name]

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.values:
            value = self.values[name]
            # A list parameter's Ref is the list, as CloudFormation gives it.
            kind = params.get(name, {}).get("Type", "")
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                return [x.strip() for x in str(value).split(",")]
            return value
        return f"<{name}>"

    def sub(self, text, extra=None):
        def one(m):
            key = m.group(1)
            if extra and key in extra:
                return str(extra[key])
            if "." in key:
                return f"<{key}>"
            return str(self.ref(key))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def value(self, node):
        if isinstance(node, dict):
            if len(node) == 1:
                (key, arg), = node.items()
                if key == "Ref":
                    return self.ref(arg)
                if key == "Condition":
                    return self.condition(arg)
                if key == "Fn::If":
                    return self.value(arg[1] if self.condition(arg[0]) else arg[2])
                if key == "Fn::Equals":
                    a, b = (self.value(x) for x in arg)
                    return str(a) == str(b)
                if key == "Fn::Not":
                    return not self.value(arg[0])
                if key == "Fn::And":
                    return all(self.value(x) for x in arg)
                if key == "Fn::Or":
                    return any(self.value(x) for x in arg)
                if key == "Fn::Sub":
                    if isinstance(arg, list):
                        return self.sub(arg[0], {k: self.value(v) for k, v in arg[1].items()})
                    return self.sub(arg)
                if key == "Fn::Join":
                    items = self.value(arg[1])
                    items = items.split(",") if isinstance(items, str) else items
                    return str(arg[0]).join(str(x) for x in items)
                if key == "Fn::Split":
                    return str(self.value(arg[1])).split(arg[0])
                if key == "Fn::EachMemberEquals":
                    items = self.value(arg[0])
                    items = items.split(",") if isinstance(items, str) else items
                    return all(str(x) == str(self.value(arg[1])) for x in items)
                if key == "Fn::GetAtt":
                    return f"<{arg[0]}.{arg[1]}>" if isinstance(arg, list) else f"<{arg}>"
            out = {}
            for k, v in node.items():
                v = self.value(v)
                if v is not NO_VALUE:
                    out[str(k)] = v
            return out
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not NO_VALUE]
        return node


def num(v):
    return float(v)


def timeouts(name, r):
    """Seed 003's rule for the worker, and FUNCTION_TIMEOUT_S wired to each Timeout."""
    for fn in ("OrchestratorFunction", "WorkerFunction"):
        props = r.resources[fn]["Properties"]
        env = props["Environment"]["Variables"]
        if str(env.get("FUNCTION_TIMEOUT_S")) != str(props["Timeout"]):
            fail(f"{name}: {fn}: FUNCTION_TIMEOUT_S is {env.get('FUNCTION_TIMEOUT_S')}, its Timeout is {props['Timeout']}")
        meta = tpl["Resources"][fn].get("Metadata", {})
        if meta.get("BuildMethod") != "rust-cargolambda" or not meta.get("BuildProperties", {}).get("Binary"):
            fail(f"{fn}: Metadata needs BuildMethod rust-cargolambda and BuildProperties.Binary")
    # The worker's worst case for one job, as qo_worker::lambda::WorstCase counts it
    # (attempts x (connect + read) + margin): the slot wait and tolerance, one API call, the 5
    # AWS SDK calls after it on the longest path, a 2 s margin. The SDK, slot-wait and
    # tolerance values are the binaries' defaults (not template parameters).
    MAX_SLOT_WAIT_S, CALL_TOLERANCE_S = 5.0, 0.005
    API_ATTEMPTS = 1
    SDK_MAX_ATTEMPTS, SDK_CONNECT_S, SDK_READ_S = 3, 3.0, 5.0
    v = r.values
    # With result destinations, 4 more: the delivery (every try within one SDK call's time),
    # a large body put in the bucket, the re-queue, and the result's dead letter
    # (qo_worker::lambda::SDK_CALLS_FOR_A_RESULT).
    has_results = any(str(v.get(k, "")) for k in ("ResultQueueArns", "ResultTopicArns", "ResultBusArns", "ResultFunctionArns"))
    SDK_CALLS_AFTER_THE_CALL = 5 + (4 if has_results else 0)
    MARGIN_S = 2.0
    api = API_ATTEMPTS * (num(v["ApiConnectTimeoutMs"]) + num(v["ApiReadTimeoutMs"])) / 1000
    sdk = SDK_MAX_ATTEMPTS * (SDK_CONNECT_S + SDK_READ_S)
    need = MAX_SLOT_WAIT_S + CALL_TOLERANCE_S + api + SDK_CALLS_AFTER_THE_CALL * sdk + MARGIN_S
    have = num(v["WorkerTimeout"])
    if have < need:
        fail(f"{name}: WorkerTimeout {have:g} s is below the worst case {need:g} s")
    # The orchestrator's stop margin defaults to its worst-case finish
    # (qo_orchestrator::config::FinishBudget): invokes in flight, SQS batches for MAX_IN_FLIGHT
    # deletes and 10 held releases, a fenced save, the lease release. Its timeout must hold one
    # SDK call + that margin, and leave time to dispatch.
    INVOKE_MAX_RETRIES, INVOKE_RETRY_WAIT_S, MAX_IN_FLIGHT, MAX_HELD = 4, 10.0, 64, 10
    invokes = (INVOKE_MAX_RETRIES + 1) * (SDK_CONNECT_S + SDK_READ_S) + INVOKE_MAX_RETRIES * INVOKE_RETRY_WAIT_S
    # One round of concurrent delete batches for what the last invokes dispatched; three for
    # what is held: fresh copies of those that must rotate, their originals' deletes, the
    # releases (qo_orchestrator::config::FinishBudget::batches).
    batches = (1 if MAX_IN_FLIGHT else 0) + (3 if MAX_HELD else 0)
    stop_margin_s = invokes + (batches + 2) * sdk
    idle_exit_s = 30
    orch = num(v["OrchestratorTimeout"])
    if orch < sdk + stop_margin_s:
        fail(f"{name}: OrchestratorTimeout {orch:g} s is below one SDK call + the stop margin {sdk + stop_margin_s:g} s")
    if orch <= stop_margin_s + idle_exit_s:
        fail(f"{name}: OrchestratorTimeout leaves no time to dispatch")
    return (
        f"WorkerTimeout {have:g} s >= slot wait {MAX_SLOT_WAIT_S + CALL_TOLERANCE_S:g} + API {api:g} "
        f"+ {SDK_CALLS_AFTER_THE_CALL} x SDK {sdk:g} + margin {MARGIN_S:g} = {need:g} s; "
        f"OrchestratorTimeout {orch:g} s >= SDK {sdk:g} + stop margin {stop_margin_s:g} s"
    )


def statements(props):
    return [s for doc in props.get("Policies", []) for s in doc.get("Statement", [])]


def actions(stmt):
    a = stmt.get("Action", [])
    return [a] if isinstance(a, str) else a


def resolved_checks(name, r):
    v, res = r.values, r.resources
    orch, worker = res["OrchestratorFunction"]["Properties"], res["WorkerFunction"]["Properties"]

    # Concurrency: the worker's reservation, none with 0; the orchestrator's cap always >= 1.
    wc = int(num(v["WorkerConcurrency"]))
    reserved = worker.get("ReservedConcurrentExecutions")
    if wc == 0 and reserved is not None:
        fail(f"{name}: WorkerConcurrency 0 still reserves {reserved}")
    if wc > 0 and int(num(reserved)) != wc:
        fail(f"{name}: the worker reserves {reserved}, WorkerConcurrency is {wc}")
    if int(num(orch.get("ReservedConcurrentExecutions", 0))) != 1:
        fail(f"{name}: the orchestrator must reserve exactly 1")
    # Its memory (so its CPU share) is the parameter's; the workers keep the global 128 MB.
    if int(num(orch.get("MemorySize", 0))) != int(num(v["OrchestratorMemorySize"])):
        fail(f"{name}: the orchestrator has {orch.get('MemorySize')} MB, OrchestratorMemorySize is {v['OrchestratorMemorySize']}")
    # Reserved: each function keeps to its own reservation; unreserved: the pool to the cap.
    env = orch["Environment"]["Variables"]
    cap = int(num(env.get("WORKER_CONCURRENCY_CAP", 0)))
    function_cap = int(num(env.get("WORKER_FUNCTION_CONCURRENCY_CAP", 0)))
    want = (0, wc) if wc > 0 else (int(num(v["UnreservedWorkerCap"])), 0)
    if (cap, function_cap) != want or max(cap, function_cap) < 1:
        fail(f"{name}: WORKER_CONCURRENCY_CAP, WORKER_FUNCTION_CONCURRENCY_CAP are "
             f"{cap}, {function_cap}, expected {want[0]}, {want[1]}")

    # Queues: 14-day retention, the dead-letter queue keeps at least as long, the redrive
    # policy uses MaxReceiveCount, and each source queue has an age alarm below its retention.
    retry = v["EnableRetryQueue"] == "true"
    if ("RetryQueue" in res) != retry:
        fail(f"{name}: RetryQueue exists: {'RetryQueue' in res}, EnableRetryQueue={v['EnableRetryQueue']}")
    retry_url = res["OrchestratorFunction"]["Properties"]["Environment"]["Variables"].get("RETRY_QUEUE_URL")
    glob_retry = r.value(tpl["Globals"]["Function"]["Environment"]["Variables"]["RETRY_QUEUE_URL"])
    if (glob_retry != "") == (not retry) or retry_url not in (None, glob_retry):
        fail(f"{name}: RETRY_QUEUE_URL is {glob_retry!r} with EnableRetryQueue={v['EnableRetryQueue']}")
    dlq_retention = int(res["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"])
    alarms = {n: a["Properties"] for n, a in res.items() if a["Type"] == "AWS::CloudWatch::Alarm"}
    for q in ["JobQueue"] + (["RetryQueue"] if retry else []):
        qp = res[q]["Properties"]
        retention = int(qp["MessageRetentionPeriod"])
        if retention != 1209600:
            fail(f"{name}: {q} keeps messages {retention} s, expected 1209600 (14 days)")
        if dlq_retention < retention:
            fail(f"{name}: the dead-letter queue keeps messages less long than {q}")
        if str(qp["RedrivePolicy"]["maxReceiveCount"]) != str(v["MaxReceiveCount"]):
            fail(f"{name}: {q} maxReceiveCount is not MaxReceiveCount")
        age = [
            a for a in alarms.values()
            if a.get("MetricName") == "ApproximateAgeOfOldestMessage"
            and a["Dimensions"][0]["Value"] == f"<{q}.QueueName>"
        ]
        if len(age) != 1 or not num(age[0]["Threshold"]) < retention:
            fail(f"{name}: {q} needs one ApproximateAgeOfOldestMessage alarm below its retention")

    # The worker's asynchronous settings and its Lambda alarms.
    eic = worker["EventInvokeConfig"]
    age_s = int(num(eic.get("MaximumEventAgeInSeconds", 21600)))
    if age_s != int(num(v["WorkerMaxEventAgeSeconds"])) or not 60 <= age_s <= 21600:
        fail(f"{name}: worker MaximumEventAgeInSeconds {age_s} (Lambda allows 60 to 21600)")
    if not 0 <= int(num(eic.get("MaximumRetryAttempts", 2))) <= 2:
        fail(f"{name}: worker MaximumRetryAttempts out of 0 to 2")
    if eic["DestinationConfig"]["OnFailure"]["Destination"] != "<WorkerFailureQueue.Arn>":
        fail(f"{name}: the worker's OnFailure destination is not WorkerFailureQueue")
    # The pool: WorkerFunctionCount functions, each the first one's copy but for its
    # description and its subnets; the orchestrator gets all their names in order.
    count = int(num(v["WorkerFunctionCount"]))
    pool = ["WorkerFunction"] + [f"WorkerFunction{n}" for n in range(2, 5)]
    present = [f for f in pool if f in res]
    if present != pool[:count]:
        fail(f"{name}: worker functions {present}, WorkerFunctionCount is {count}")
    names = orch["Environment"]["Variables"].get("WORKER_FUNCTION_NAMES")
    if names != ",".join(f"<{f}>" for f in present) or "WORKER_FUNCTION_NAME" in orch["Environment"]["Variables"]:
        fail(f"{name}: WORKER_FUNCTION_NAMES is {names!r}, expected the pool {present}")
    # Results: the destinations in both functions' environment, the worker allowed to reach
    # each of them and nothing else, and a bucket for large bodies exactly when there are any.
    arn_lists = [v.get(k, "") for k in ("ResultQueueArns", "ResultTopicArns", "ResultBusArns", "ResultFunctionArns")]
    want_arns = [a for lst in arn_lists for a in str(lst).split(",") if a]
    glob_env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    got_arns = [a for a in str(r.value(glob_env["RESULT_DESTINATIONS"])).split(",") if a]
    if got_arns != want_arns:
        fail(f"{name}: RESULT_DESTINATIONS is {got_arns}, expected {want_arns}")
    if ("ResultsBucket" in res) != bool(want_arns):
        fail(f"{name}: ResultsBucket exists: {'ResultsBucket' in res}, destinations: {want_arns}")
    granted = {
        a: sorted(str(x) for x in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]))
        for st in statements(worker)
        for a in actions(st)
        if a in ("sqs:GetQueueUrl", "sns:Publish", "events:PutEvents", "lambda:InvokeFunction")
    }
    for action, key in (("sqs:GetQueueUrl", "ResultQueueArns"), ("sns:Publish", "ResultTopicArns"),
                        ("events:PutEvents", "ResultBusArns"), ("lambda:InvokeFunction", "ResultFunctionArns")):
        want = sorted(a for a in str(v.get(key, "")).split(",") if a)
        if granted.get(action, []) != want:
            fail(f"{name}: the worker's {action} covers {granted.get(action)}, expected {want}")
    if want_arns and worker["Environment"]["Variables"].get("RESULT_BUCKET") != "<ResultsBucket>":
        fail(f"{name}: the worker's RESULT_BUCKET is not the results bucket")
    # Logs: SAM's AWSLambdaBasicExecutionRole is capped by a boundary on every function to
    # the stack's two log groups.
    if tpl["Globals"]["Function"].get("PermissionsBoundary") != {"Ref": "FunctionPermissionsBoundary"}:
        fail(f"{name}: the functions' PermissionsBoundary is not FunctionPermissionsBoundary")
    boundary = res["FunctionPermissionsBoundary"]["Properties"]["PolicyDocument"]["Statement"]
    logs = [st for st in boundary if any(a.startswith("logs:") for a in actions(st))]
    rest = [st for st in boundary if st not in logs]
    if sorted(a for st in logs for a in actions(st)) != ["logs:CreateLogStream", "logs:PutLogEvents"] \
            or sorted(x for st in logs for x in st["Resource"]) != ["<OrchestratorLogGroup.Arn>", "<WorkerLogGroup.Arn>"]:
        fail(f"{name}: the boundary's logs statement is {logs}")
    if any(st.get("NotAction") != "logs:*" for st in rest):
        fail(f"{name}: the boundary allows logs actions beyond the two log groups: {rest}")
    strip = lambda p: {k: x for k, x in p.items() if k not in ("Description", "VpcConfig")}
    for n, f in enumerate(present, 1):
        props = res[f]["Properties"]
        if strip(props) != strip(worker):
            fail(f"{name}: {f} differs from WorkerFunction in more than its description and subnets")
        subnets = [x for x in str(v[f"WorkerSubnetIds{n}"]).split(",") if x]
        vpc = props.get("VpcConfig")
        as_list = lambda x: x if isinstance(x, list) else [y for y in str(x).split(",") if y]
        if bool(subnets) != bool(vpc) or (vpc and (as_list(vpc["SubnetIds"]) != subnets
                                                  or as_list(vpc["SecurityGroupIds"]) != as_list(v["WorkerSecurityGroupIds"]))):
            fail(f"{name}: {f}'s VpcConfig {vpc} does not follow WorkerSubnetIds{n} and WorkerSecurityGroupIds")
    # Lambda's alarms on the worker cover every function of the pool.
    for metric in ("Throttles", "AsyncEventAge", "Errors"):
        if not any(
            sorted(
                m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
                for m in a.get("Metrics", [])
                if "MetricStat" in m and m["MetricStat"]["Metric"]["MetricName"] == metric
                and m["MetricStat"]["Metric"]["Namespace"] == "AWS/Lambda"
            ) == sorted(f"<{f}>" for f in present)
            for a in alarms.values()
        ):
            fail(f"{name}: no alarm on the {metric} of every worker function {present}")

    # Every alarm goes to the topic and tells the operator what it means.
    for n, a in alarms.items():
        if a.get("AlarmActions") != ["<AlarmTopic>"] or not str(a.get("AlarmDescription", "")).strip():
            fail(f"{name}: {n} needs AlarmActions [AlarmTopic] and an AlarmDescription")
        if len(str(a["AlarmDescription"])) > 1024:
            fail(f"{name}: {n}'s AlarmDescription is over 1024 characters")
    if ("AlarmEmailSubscription" in res) != (v["AlarmEmail"] != ""):
        fail(f"{name}: the e-mail subscription does not follow AlarmEmail")

    # The orchestrator may invoke itself: its own ARN, from its FunctionName.
    fname = orch.get("FunctionName", "")
    if len(fname) > 64:
        fail(f"{name}: the orchestrator's name {fname} is over 64 characters")
    arn = f"arn:{PSEUDO['AWS::Partition']}:lambda:{PSEUDO['AWS::Region']}:{PSEUDO['AWS::AccountId']}:function:{fname}"
    invokes = [
        r for s in statements(orch) if "lambda:InvokeFunction" in actions(s)
        for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    if sorted(map(str, invokes)) != sorted([arn] + [f"<{f}.Arn>" for f in present]):
        fail(f"{name}: the orchestrator invokes {invokes}, expected the pool {present} and {arn}")

    # The credential: the worker reads exactly the configured source.
    env = worker["Environment"]["Variables"]
    wsids = {s.get("Sid") for s in statements(worker)}
    for key, var, sid in (
        ("ApiKeySecretArn", "API_KEY_SECRET_ID", "ReadApiKeySecret"),
        ("ApiKeyParameterName", "API_KEY_PARAMETER", "ReadApiKeyParameter"),
        ("KmsKeyArn", None, "DecryptApiKey"),
    ):
        on = v[key] != ""
        if var and (env.get(var) == v[key]) != on:
            fail(f"{name}: {var} does not follow {key}")
        if (sid in wsids) != on:
            fail(f"{name}: statement {sid} does not follow {key}")

    # Each function may read and write every item its code uses.
    item_access(name, "OrchestratorFunction", orch, ORCHESTRATOR_ITEMS)
    for f in present:
        item_access(name, f, res[f]["Properties"], WORKER_ITEMS)

    # Every DynamoDB permission of both roles is scoped to item keys.
    for fn, props in (("OrchestratorFunction", orch), ("WorkerFunction", worker)):
        for s in statements(props):
            if any(a.startswith("dynamodb:") for a in actions(s)):
                cond = s.get("Condition", {})
                keys = [c.get("dynamodb:LeadingKeys") for c in cond.values()]
                if not any(keys):
                    fail(f"{name}: {fn} statement {s.get('Sid')} has no dynamodb:LeadingKeys condition")
            if any(a in ("dynamodb:*", "sqs:*", "lambda:*") for a in actions(s)):
                fail(f"{name}: {fn} statement {s.get('Sid')} grants a wildcard action")


# The items each function's code reads and writes, from the code itself: the record keys
# (RecordKey::as_str in qo-core), the lease item and the job#/batch# prefixes (qo-aws).
_store_rs = pathlib.Path("crates/qo-core/src/ports/store.rs").read_text()
_dynamo_rs = pathlib.Path("crates/qo-aws/src/dynamo.rs").read_text()
RECORDS = dict(re.findall(r'RecordKey::(\w+) => "([^"]+)"', _store_rs))
ITEM_CONSTS = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', _dynamo_rs))
# Orchestrator: quota usage and the lease on its item (take, renew, release and the fenced save
# are updates; a fenced save of another record checks it), the sweep's progress (a fenced put),
# the circuit (health checks sent) and the controls (operator commands).
LEASE = ITEM_CONSTS["LEASE_PK"]
ORCHESTRATOR_ITEMS = {
    "dynamodb:GetItem": {LEASE, RECORDS["Quota"], RECORDS["Sweep"], RECORDS["Circuit"], RECORDS["Control"]},
    "dynamodb:PutItem": {RECORDS["Sweep"], RECORDS["Circuit"], RECORDS["Control"]},
    "dynamodb:UpdateItem": {LEASE, RECORDS["Quota"]},
    "dynamodb:ConditionCheckItem": {LEASE},
}
# Worker: its claims (job#<id>), a batch's done record (batch#<key>, read, and written by an
# update that adds to its set of job ids), the circuit, the back-off; a claim released is
# deleted.
_worker_items = {ITEM_CONSTS["JOB_PREFIX"] + "*", ITEM_CONSTS["BATCH_PREFIX"] + "*",
                 RECORDS["Circuit"], RECORDS["Control"]}
WORKER_ITEMS = {
    "dynamodb:GetItem": _worker_items,
    "dynamodb:PutItem": {ITEM_CONSTS["JOB_PREFIX"] + "*", RECORDS["Circuit"], RECORDS["Control"]},
    "dynamodb:UpdateItem": {ITEM_CONSTS["BATCH_PREFIX"] + "*"},
    "dynamodb:DeleteItem": {ITEM_CONSTS["JOB_PREFIX"] + "*"},
}
if len(RECORDS) != 4 or not {"LEASE_PK", "JOB_PREFIX", "BATCH_PREFIX"} <= ITEM_CONSTS.keys():
    fail(f"could not read the item keys from the code: {RECORDS}, {ITEM_CONSTS}")


def item_access(name, fn, props, want):
    """Each action in `want` must be granted on every item it names (an item of a
    TransactWriteItems is authorized by its own action: a Put by PutItem, a ConditionCheck by
    ConditionCheckItem)."""
    for action, items in want.items():
        granted = set()
        for s in statements(props):
            if action in actions(s):
                for c in s.get("Condition", {}).values():
                    keys = c.get("dynamodb:LeadingKeys", [])
                    granted |= set([keys] if isinstance(keys, str) else keys)
        if not items <= granted:
            fail(f"{name}: {fn} may not {action} items {sorted(items - granted)} its code uses "
                 f"(granted {sorted(granted)})")


def producers_only(name, r, values):
    """With ProducerPrincipals, the job queue's policy refuses SendMessage to all but them and
    the stack's own function roles; without, it names no producer."""
    statements = r.resources["JobQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    deny = [s for s in statements if s.get("Sid") == "OnlyNamedProducersSend"]
    named = [p for p in str(values.get("ProducerPrincipals", "")).split(",") if p]
    if not named:
        if deny:
            fail(f"{name}: OnlyNamedProducersSend without ProducerPrincipals")
        return
    if len(deny) != 1 or deny[0]["Effect"] != "Deny" or deny[0]["Action"] != "sqs:SendMessage":
        fail(f"{name}: the job queue's policy does not refuse other producers: {deny}")
    allowed = deny[0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    roles = ["<OrchestratorFunctionRole.Arn>", "<WorkerFunctionRole.Arn>"]
    roles += [f"<WorkerFunction{i}Role.Arn>" for i in range(2, int(values.get("WorkerFunctionCount", 1)) + 1)]
    for arn in named + roles:
        if arn not in allowed:
            fail(f"{name}: {arn} may not send to the job queue (allowed: {allowed})")


def globals_follow(name, r, values):
    """Every function reads the same allow-list and result settings (the Globals' variables,
    the parameters' values); no function sets its own. An empty ResultHeaders sets no
    RESULT_HEADERS, so the worker keeps its default list."""
    glob_env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    defaults = {"ResultBodyMaxBytes": "1048576"}
    for var, param in (("ALLOWED_METHODS", "AllowedMethods"), ("ALLOWED_PATH_PREFIXES", "AllowedPathPrefixes"),
                       ("RESULT_HEADERS", "ResultHeaders"), ("RESULT_BODY_MAX_BYTES", "ResultBodyMaxBytes")):
        want = str(values.get(param, defaults.get(param, "")))
        got = r.value(glob_env[var]) if var in glob_env else "<unset>"
        got = "" if got is NO_VALUE else str(got)
        if got != want:
            fail(f"{name}: {var} is {got!r}, {param} is {want!r}")
        for fn, res in r.resources.items():
            own = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
            if res.get("Type") == "AWS::Serverless::Function" and var in own:
                fail(f"{name}: {fn} sets its own {var}")


def rules_hold(name, r):
    for rule_name, rule in tpl.get("Rules", {}).items():
        if "RuleCondition" in rule and not r.value(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not r.value(assertion["Assert"]):
                fail(f"parameter set {name}: rule {rule_name}: {assertion.get('AssertDescription')}")


sets = {"defaults": dict(REQUIRED_FOR_DEFAULTS)}
sets.update(PARAMETER_SETS)
for name, values in sets.items():
    check_constraints(name, values)
    r = Resolved(values)
    rules_hold(name, r)
    summary = timeouts(name, r)
    resolved_checks(name, r)
    producers_only(name, r, values)
    globals_follow(name, r, values)
    print(f"sam.sh: ok: {name}: resolved template checks pass; {summary}")
    if name != "defaults":
        rendered = json.loads(json.dumps(tpl))
        for key, value in values.items():
            rendered["Parameters"][key]["Default"] = value
        (RENDERED / f"{name}.json").write_text(json.dumps(rendered, indent=1))

# Event samples: JSON, with the shapes the functions take.
events = pathlib.Path("events")
expected = {
    "scheduled.json": lambda e: e["detail-type"] == "Scheduled Event" and e["source"] == "aws.events",
    "worker-job.json": lambda e: e["kind"] == "job"
    and e["job"]["path"].startswith("/")
    and all(isinstance(e[k], int) for k in ("slot_at", "dispatched_at", "epoch")),
    "worker-health-check.json": lambda e: e["kind"] == "health_check" and isinstance(e["sent_at"], int),
    "control-pause.json": lambda e: e == {"action": "pause"},
    "control-resume.json": lambda e: e == {"action": "resume"},
    "control-circuit-open.json": lambda e: e == {"action": "circuit_open"},
    "control-circuit-close.json": lambda e: e == {"action": "circuit_close"},
    "control-set-quota.json": lambda e: e["action"] == "set_quota" and "/" in e["quota"],
    "control-redrive.json": lambda e: e["action"] == "redrive",
}
for name, check in expected.items():
    path = events / name
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if not check(event):
        fail(f"{path}: unexpected content {event}")
jobs = [line for line in (events / "jobs.jsonl").read_text().splitlines() if line.strip()]
for i, line in enumerate(jobs, 1):
    try:
        job = json.loads(line)
    except ValueError as e:
        fail(f"events/jobs.jsonl line {i}: {e}")
    if not str(job.get("path", "")).startswith("/"):
        fail(f"events/jobs.jsonl line {i}: path must start with /")
if len(jobs) != 20:
    fail(f"events/jobs.jsonl has {len(jobs)} jobs, expected 20")
print(f"sam.sh: ok: events/: {len(expected)} samples and {len(jobs)} jobs parse")
PY
CHECKED+=("resolved template (defaults and every parameter set): timeouts, concurrency, queues, alarms, IAM" "events/ samples parse")

# 3 (continued). The rendered copies through both linters.
for f in "$RENDERED"/*.json; do
  set_name="$(basename "$f" .json)"
  cfn-lint --include-checks I -- "$f" || die "cfn-lint failed on the template with parameter set $set_name"
  sam validate --lint --template-file "$f" >/dev/null || die "sam validate --lint failed with parameter set $set_name"
  ok "parameter set $set_name: cfn-lint and sam validate --lint clean"
done

if [[ "$BUILD" == 0 ]]; then
  say "--no-build: sam build skipped"
else
  # 5. sam build. Output goes to .aws-sam/build; cargo builds into the workspace target dir
  #    (target/aarch64-unknown-linux-gnu/release, copied to target/lambda/<bin>/bootstrap).
  rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu ||
    die "rustup target aarch64-unknown-linux-gnu is not installed: run bash tests/setup.sh"
  say "$(cargo lambda --version); zig $(zig version): sam build --beta-features"
  t=$SECONDS
  # With a pool of two worker functions: each is built (the same `worker` binary).
  sam build --beta-features --parameter-overrides WorkerFunctionCount=2 ApiBaseUrl=https://api.example.com
  build_s=$((SECONDS - t))
  ok "sam build (two worker functions) in ${build_s} s"

  # 6. The artifacts: 64-bit little-endian ELF, executable or PIE, e_machine 0xB7 (AArch64).
  # Each function's artifact is where the built template's CodeUri says: functions built alike
  # (the pool's workers, one `worker` binary) share one directory, e.g. WorkerFunction-Shared.
  for fn in OrchestratorFunction WorkerFunction WorkerFunction2; do
    dir="$("$VENV/bin/python3" - "$fn" <<'PY'
import sys
from cfnlint.decode import decode
tpl, errors = decode(".aws-sam/build/template.yaml")
if errors:
    sys.exit(f"sam.sh: ERROR: .aws-sam/build/template.yaml: {errors}")
print(tpl["Resources"][sys.argv[1]]["Properties"]["CodeUri"])
PY
)" || die "$fn is not in .aws-sam/build/template.yaml"
    f=".aws-sam/build/$dir/bootstrap"
    [[ -f "$f" ]] || die "$f was not produced"
    [[ -x "$f" ]] || die "$f is not executable"
    read -r -a h <<<"$(od -An -tx1 -N20 -v "$f" | tr '\n' ' ')"
    [[ "${#h[@]}" -eq 20 ]] || die "$f is shorter than an ELF header"
    [[ "${h[0]}${h[1]}${h[2]}${h[3]}" == 7f454c46 ]] || die "$f is not an ELF file (magic ${h[*]:0:4})"
    [[ "${h[4]}" == 02 ]] || die "$f is not a 64-bit ELF (EI_CLASS ${h[4]})"
    [[ "${h[5]}" == 01 ]] || die "$f is not little-endian (EI_DATA ${h[5]})"
    [[ "${h[16]}${h[17]}" == 0200 || "${h[16]}${h[17]}" == 0300 ]] ||
      die "$f is not an executable (e_type ${h[17]}${h[16]})"
    [[ "${h[18]}${h[19]}" == b700 ]] || die "$f is not aarch64 (e_machine 0x${h[19]}${h[18]}, want 0x00b7)"
    ok "$fn: $f: ELF64 LSB aarch64 executable, $(($(wc -c <"$f") / 1024)) KiB"
  done

  # 7. The example worker (examples/customer-summary) with the one change its README names:
  #    the worker functions' BuildProperties Binary. Only WorkerFunction is built.
  example_tpl="$(mktemp -d)/template.yaml"
  sed 's/^        Binary: worker$/        Binary: customer-summary-worker/' template.yaml >"$example_tpl"
  [[ "$(grep -c 'Binary: customer-summary-worker' "$example_tpl")" == 4 ]] ||
    die "the example's template change did not reach the four worker functions"
  t=$SECONDS
  sam build WorkerFunction --beta-features --template-file "$example_tpl" --base-dir . \
    --build-dir .aws-sam/example-build --parameter-overrides ApiBaseUrl=https://api.example.com
  dir="$("$VENV/bin/python3" - <<'PY'
import sys
from cfnlint.decode import decode
tpl, errors = decode(".aws-sam/example-build/template.yaml")
if errors:
    sys.exit(f"sam.sh: ERROR: .aws-sam/example-build/template.yaml: {errors}")
print(tpl["Resources"]["WorkerFunction"]["Properties"]["CodeUri"])
PY
)" || die "WorkerFunction is not in .aws-sam/example-build/template.yaml"
  f=".aws-sam/example-build/$dir/bootstrap"
  [[ -x "$f" ]] || die "$f was not produced"
  read -r -a h <<<"$(od -An -tx1 -N20 -v "$f" | tr '\n' ' ')"
  [[ "${h[18]}${h[19]}" == b700 ]] || die "$f is not aarch64"
  ok "example worker: sam build WorkerFunction with Binary customer-summary-worker in $((SECONDS - t)) s"
  CHECKED+=("sam build of the example worker (examples/customer-summary)")
fi

say "all checks passed in $((SECONDS - start)) s:"
for c in "${CHECKED[@]}"; do
  say "  - $c"
done
