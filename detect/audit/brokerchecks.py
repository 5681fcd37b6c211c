"""Broker checks over mosquitto.conf (with include_dir) and its acl_file."""

from typing import List, Optional

from garrison.detect.audit.checks import CRITICAL, HIGH, LOW, Check, Context, finding
from garrison.detect.audit.sources import AclRule, Directive, Listener
from garrison.detect.ops.pki import DEFAULT_ENGINE_IDENTITY

# Mosquitto logs "New client connected ..." at notice and "... already connected, closing old
# connection" at information; its default log_type (no log_type line) includes both.
NEEDED_LOG_TYPES = ("notice", "information")


def logging_disabled(ctx: Context):
    conf = ctx.need_broker()
    problems = []
    messages = conf.last("connection_messages")
    if messages and messages.value.lower() == "false":
        problems.append(f"connection_messages false ({messages.file}:{messages.line})")
    dests = conf.all("log_dest")
    if dests and all(d.value.split()[0].lower() == "none" for d in dests if d.args):
        problems.append(f"log_dest none ({dests[-1].file}:{dests[-1].line})")
    types = [d.value.lower() for d in conf.all("log_type")]
    if types and "all" not in types:
        missing = [t for t in NEEDED_LOG_TYPES if t not in types]
        if missing:
            problems.append(f"log_type lacks {' and '.join(missing)}")
    out = []
    if problems:
        out.append(
            finding(
                "ACCOUNT_SETTINGS",
                {"account": str(conf.path)},
                "LOGGING_DISABLED",
                "the broker does not log connections: " + "; ".join(problems),
                file=str(conf.path),
                problems=problems,
            )
        )
    return 1, out


def _allows_anonymous(ctx: Context, listener: Listener) -> Optional[Directive]:
    conf = ctx.need_broker()
    directive = listener.settings.get("allow_anonymous") if conf.per_listener_settings else conf.last("allow_anonymous")
    return directive if directive is not None and directive.value.lower() == "true" else None


def anonymous_access(ctx: Context):
    out = []
    listeners = ctx.need_broker().listeners
    for listener in listeners:
        directive = _allows_anonymous(ctx, listener)
        if directive is not None:
            out.append(
                finding(
                    "BROKER_LISTENER",
                    {"listener": listener.address},
                    "ALLOWS_ANONYMOUS_ACCESS",
                    f"listener {listener.address} accepts clients without credentials (allow_anonymous true)",
                    port=listener.port,
                    file=directive.file,
                    line=directive.line,
                )
            )
    return len(listeners), out


def plaintext_listener(ctx: Context):
    out = []
    listeners = ctx.need_broker().listeners
    for listener in listeners:
        if not listener.tls and not listener.loopback_only:
            where = listener.where
            out.append(
                finding(
                    "BROKER_LISTENER",
                    {"listener": listener.address},
                    "PLAINTEXT_LISTENER",
                    f"listener {listener.address} has no TLS (no certfile) and is reachable beyond loopback",
                    port=listener.port,
                    file=where.file,
                    line=where.line,
                    protocol=listener.get("protocol", "mqtt"),
                )
            )
    return len(listeners), out


def _engine_identity(ctx: Context) -> str:
    if ctx.settings.engine_identity:
        return ctx.settings.engine_identity
    if ctx.pki is not None:
        try:
            name = (ctx.pki.directory / "engine.name").read_text().strip()
            if name:
                return name
        except OSError:
            pass
    return DEFAULT_ENGINE_IDENTITY


def rule_problems(rule: AclRule, engine: str) -> List[str]:
    """Why an ACL rule grants a client more than its own topics (empty: it does not)."""
    if rule.access == "deny":
        return []
    levels = rule.topic.split("/")
    writes = rule.access in ("write", "readwrite")
    problems = []
    if levels[0] in ("#", "+") and levels[-1] == "#" or rule.topic == "#":
        problems.append(f"grants every topic ({rule.topic})")
    if rule.kind == "topic" and rule.user == engine:
        return problems  # the engine reads every thing's reports by design; only '#' is too much
    who = (
        "every client"
        if rule.kind == "pattern"
        else ("anonymous clients" if rule.user is None else f"user {rule.user}")
    )
    if len(levels) > 2 and levels[0] == "$aws" and levels[1] == "things":
        thing = levels[2]
        if thing in ("+", "#"):
            problems.append(f"gives {who} the topics of every thing ({rule.topic})")
        elif rule.kind == "pattern" and "%u" not in thing and "%c" not in thing:
            problems.append(f"gives {who} the topics of thing {thing} ({rule.topic})")
        elif rule.kind == "topic" and rule.user is not None and thing != rule.user:
            problems.append(f"gives {who} the topics of another thing, {thing} ({rule.topic})")
        elif "#" in levels[3:] or "+" in levels[3:]:
            problems.append(f"gives {who} a wildcard over its thing's topics ({rule.topic})")
    elif levels[0] == "garrison" and len(levels) > 1 and levels[1] == "alerts" and writes:
        problems.append(f"lets {who} publish alerts ({rule.topic})")
    elif not problems and rule.kind == "topic" and rule.user is None:
        problems.append(f"gives anonymous clients {rule.access} on {rule.topic}")
    return problems


def overly_permissive(ctx: Context):
    conf = ctx.need_broker()
    out = []
    if conf.acl_path is None:
        out.append(
            finding(
                "IOT_POLICY",
                {"policyVersionIdentifier": {"policyName": "acl", "policyVersionId": "none"}},
                "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS",
                "the broker has no acl_file: every authenticated client may read and write every topic",
                file=str(conf.path),
            )
        )
        return 1, out
    engine = _engine_identity(ctx)
    for rule in conf.acl:
        problems = rule_problems(rule, engine)
        if problems:
            principal = "pattern" if rule.kind == "pattern" else (f"user:{rule.user}" if rule.user else "anonymous")
            out.append(
                finding(
                    "IOT_POLICY",
                    {"policyVersionIdentifier": {"policyName": principal, "policyVersionId": str(rule.line)}},
                    "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS",
                    "; ".join(problems),
                    file=rule.file,
                    line=rule.line,
                    rule=f"{rule.kind} {rule.access} {rule.topic}",
                    user=rule.user,
                )
            )
    return len(conf.acl), out


CHECKS = [
    Check(
        "LOGGING_DISABLED_CHECK",
        LOW,
        ("broker",),
        logging_disabled,
        description="the broker logs no connections (connection_messages, log_dest, log_type)",
    ),
    Check(
        "BROKER_ANONYMOUS_ACCESS_CHECK",
        CRITICAL,
        ("broker",),
        anonymous_access,
        description="a listener with allow_anonymous true",
    ),
    Check(
        "BROKER_PLAINTEXT_LISTENER_CHECK",
        HIGH,
        ("broker",),
        plaintext_listener,
        description="a listener without TLS on a non-loopback address",
    ),
    Check(
        "IOT_POLICY_OVERLY_PERMISSIVE_CHECK",
        CRITICAL,
        ("broker",),
        overly_permissive,
        description="ACL rules granting a client more than its own topics",
    ),
]
