"""``rlm tenants``: add, list, change, disable and re-key the tenants of a service's database.

    rlm tenants [--db URL] add NAME [policy flags]     prints the new API key, once
    rlm tenants [--db URL] list
    rlm tenants [--db URL] set NAME [policy flags]
    rlm tenants [--db URL] disable NAME | enable NAME  a disabled tenant's runs are cancelled at once
    rlm tenants [--db URL] rotate-key NAME             prints the new key; the old one stops working

Policy flags are the fields of ``rlm.service.policy.Policy`` (``--max-memory-mb 1024``, ``--backends
docker --runtimes runsc``, ``--daily-usd 20``, ``--models gpt-5-mini,gpt-5-nano``); ``none`` lifts a
limit, and for models and tools ``any`` allows everything the server configures. Works on the
database directly (a running server notices within a second); every change is audited.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import sys
import typing
from typing import Any

from rlm.service.config import DEFAULT_DATABASE_URL, load_config
from rlm.service.policy import Policy

DB_ENV = "RLM_SERVICE_DB"


def _policy_fields() -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(Policy)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Policy)]


def _parse_value(name: str, hint: Any, text: str) -> Any:
    optional = type(None) in typing.get_args(hint)
    if text.lower() in ("none", "any"):
        if optional:
            return None
        raise SystemExit(f"rlm tenants: --{name.replace('_', '-')} cannot be lifted (no 'none')")
    kind = hint
    if optional:  # X | None
        kind = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        return kind(text) if kind in (int, float) else text
    except ValueError:
        raise SystemExit(f"rlm tenants: --{name.replace('_', '-')} takes a number (or none), not {text!r}") from None


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy (default: the server's [default_policy])")
    for name, _hint in _policy_fields():
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"policy_{name}", metavar="VALUE")


def policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes = {}
    for name, hint in _policy_fields():
        text = getattr(args, f"policy_{name}", None)
        if text is not None:
            changes[name] = _parse_value(name, hint, text)
    return changes


def add_tenants_parser(sub: argparse._SubParsersAction) -> None:
    tenants = sub.add_parser("tenants", help="manage the tenants of `rlm serve`",
                             description="Manage the tenants and API keys of an `rlm serve` database.")
    tenants.add_argument("--db", help=f"database URL (default: ${DB_ENV}, the config's, or {DEFAULT_DATABASE_URL})")
    tenants.add_argument("--config", help="the server's configuration file (for its database and default policy)")
    actions = tenants.add_subparsers(dest="tenants_action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="add a tenant; prints its API key once")
    add.add_argument("name")
    add_policy_flags(add)
    actions.add_parser("list", help="list tenants and their policies").add_argument("--json", action="store_true")
    change = actions.add_parser("set", help="change a tenant's policy")
    change.add_argument("name")
    add_policy_flags(change)
    for action, text in (("disable", "disable a tenant (its runs are cancelled)"), ("enable", "enable a tenant again"),
                         ("rotate-key", "give a tenant a new API key (the old one stops working)")):
        actions.add_parser(action, help=text).add_argument("name")
    tenants.set_defaults(func=cmd_tenants)


def database_url(args: argparse.Namespace) -> str:
    config = load_config(args.config) if args.config else None
    return (args.db or os.environ.get(DB_ENV) or (config.server.database_url if config else None)
            or DEFAULT_DATABASE_URL)


def cmd_tenants(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (SystemExit, KeyboardInterrupt):
        raise
    except ValueError as exc:
        print(f"rlm tenants: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    from rlm.service import auth
    from rlm.service.store import Store

    store = Store(database_url(args))
    actor = f"cli:{getpass.getuser()}"
    try:
        await store.migrate()
        action = args.tenants_action
        if action == "list":
            tenants = await store.tenants()
            if args.json:
                print(json.dumps([{"id": t.id, "name": t.name, "disabled": t.disabled, "policy": t.policy}
                                  for t in tenants], indent=2))
            else:
                for t in tenants:
                    state = "disabled" if t.disabled else "enabled"
                    print(f"{t.name}\t{t.id}\t{state}\t{json.dumps(t.policy, separators=(',', ':'))}")
            return 0
        if action == "add":
            if await store.tenant_by_name(args.name) is not None:
                print(f"rlm tenants: a tenant named {args.name!r} exists; use `rlm tenants set`", file=sys.stderr)
                return 1
            default = load_config(args.config).default_policy if args.config else Policy()
            policy = default.replace(**policy_changes(args))
            key = auth.new_key()
            tenant = await store.add_tenant(args.name, policy.to_dict(), key.key_id, key.key_hash)
            await store.audit("tenant_add", actor=actor, tenant_id=tenant.id,
                              detail={"name": args.name, "policy": policy.to_dict(), "key_id": key.key_id})
            print(f"tenant {args.name} ({tenant.id}) added. Its API key (shown only now):", file=sys.stderr)
            print(key.key)
            return 0
        tenant = await store.tenant_by_name(args.name)
        if tenant is None:
            print(f"rlm tenants: no tenant named {args.name!r} (see `rlm tenants list`)", file=sys.stderr)
            return 1
        if action == "set":
            changes = policy_changes(args)
            if not changes:
                print("rlm tenants set: give at least one policy flag (see --help)", file=sys.stderr)
                return 1
            policy = Policy.from_dict(tenant.policy).replace(**changes)
            await store.update_tenant(tenant.id, policy=policy.to_dict())
            await store.audit("policy_set", actor=actor, tenant_id=tenant.id,
                              detail={"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}})
            print(json.dumps(policy.to_dict()))
        elif action in ("disable", "enable"):
            await store.update_tenant(tenant.id, disabled=action == "disable")
            await store.audit(f"tenant_{action}", actor=actor, tenant_id=tenant.id, detail={})
            print(f"tenant {tenant.name} {action}d", file=sys.stderr)
        elif action == "rotate-key":
            key = auth.new_key()
            await store.update_tenant(tenant.id, key_id=key.key_id, key_hash=key.key_hash)
            await store.audit("key_rotate", actor=actor, tenant_id=tenant.id,
                              detail={"old_key_id": tenant.key_id, "key_id": key.key_id})
            print(f"new API key for {tenant.name} (shown only now; the old key no longer works):", file=sys.stderr)
            print(key.key)
        return 0
    finally:
        await store.close()
