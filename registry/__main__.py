"""``python -m registry``: status, promote, set-weight, rollback, history, materialize, unlock, serve."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from registry import events, materialize, rollout, server
from registry.errors import ConcurrentChangeError, RegistryError
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.status import Lineage, Status, read_status
from registry.store import Store

EXIT_ERROR = 1
EXIT_CONFLICT = 3  # another action moved the state: safe to re-read and retry


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not a percent from 0 to 100")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    parser.add_argument("--model", help="registered model name (default: REGISTRY_MODEL_NAME or qwen3-vl)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="champion, canary, candidate with lineage")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    promote = sub.add_parser("promote", help="candidate -> canary, or canary -> champion")
    promote.add_argument("--to", choices=["canary", "champion"], required=True)
    promote.add_argument("--version", type=int, help="refuse unless this is the version being promoted")
    promote.add_argument("--weight", type=_percent, default=0, help="initial canary share (with --to canary)")
    weight = sub.add_parser("set-weight", help="the canary's share of traffic, in percent")
    weight.add_argument("weight", type=_percent)
    weight.add_argument("--version", type=int, help="refuse unless this is the canary")
    back = sub.add_parser("rollback", help="drop the canary, or else return to the previous champion")
    back.add_argument("--version", type=int, help="refuse unless this is the version rolled back")
    hist = sub.add_parser("history", help="recorded actions, newest first")
    hist.add_argument("--limit", type=int, default=20)
    hist.add_argument("--json", action="store_true")
    mat = sub.add_parser("materialize", help="write a Triton model repository with champion and canary")
    mat.add_argument("--out", type=Path, required=True)
    mat.add_argument("--json", action="store_true")
    sub.add_parser("unlock", help="clear the rollout lock of an action that died")
    sub.add_parser("serve", help="run the MLflow server on the project's store (make mlflow)")
    return parser


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _line(alias: str, lineage: Lineage | None, weight: int) -> str:
    if lineage is None:
        return f"  {alias:<18} -"
    share = f"  {weight}% of traffic" if alias == "canary" else ""
    dirty = " (dirty)" if lineage.dirty else ""
    return (
        f"  {alias:<18} v{lineage.version}{share}\n"
        f"  {'':<18} accuracy {_fmt(lineage.accuracy, '.4f')} (drop {_fmt(lineage.drop, '+.4f')}), "
        f"{lineage.quantization or '-'}, {lineage.size_bytes if lineage.size_bytes is not None else '-'} bytes\n"
        f"  {'':<18} commit {(lineage.commit or '-')[:12]}{dirty}, dvc.lock {(lineage.dvc_lock_sha256 or '-')[:12]}, "
        f"run {lineage.run_id or '-'}"
    )


def print_status(status: Status, as_json: bool) -> None:
    if as_json:
        print(status.model_dump_json(indent=2))
        return
    print(f"{status.registered_model} at {status.tracking_uri} (generation {status.generation})")
    for alias, lineage in status.by_alias().items():
        print(_line(alias, lineage, status.canary_weight))
    print(f"last event: {status.last_event or '-'}")


def print_events(found: list[Event], as_json: bool) -> None:
    if as_json:
        print(json.dumps([event.model_dump(mode="json") for event in found], indent=2))
        return
    for event in found:
        print(f"{event.at:%Y-%m-%d %H:%M:%S} #{event.generation:<4} {event.summary} (by {event.actor})")
    if not found:
        print("no recorded actions")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    if args.command == "serve":
        logging.getLogger().setLevel(logging.INFO)
        return server.serve_forever(settings)
    store, actor = Store(settings), Actor.from_env()
    if args.command == "status":
        print_status(read_status(store), args.json)
    elif args.command == "history":
        print_events(events.history(store, args.limit), args.json)
    elif args.command == "materialize":
        result = materialize.materialize(store, args.out)
        print(
            result.model_dump_json(indent=2) if args.json else f"{result.out}: {result.triton_model} {result.versions}"
        )
    else:
        if args.command == "promote" and args.to == "canary":
            event = rollout.promote_to_canary(store, actor, args.version, args.weight)
        elif args.command == "promote":
            event = rollout.promote_to_champion(store, actor, args.version)
        elif args.command == "set-weight":
            event = rollout.set_weight(store, actor, args.weight, args.version)
        elif args.command == "rollback":
            event = rollout.rollback(store, actor, args.version)
        else:
            event = rollout.unlock(store, actor)
        print(f"{event.summary} (generation {event.generation}, by {event.actor})")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # A command a person waits on should fail in seconds when MLflow is down, not after MLflow's
    # default of seven retries (about four minutes). The environment still wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        settings = RegistrySettings() if args.model is None else RegistrySettings(model_name=args.model)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"registry: error: bad settings (--model, REGISTRY_*, MLFLOW_TRACKING_URI): {problems}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return run(args, settings)
    except ConcurrentChangeError as exc:
        print(f"registry: conflict: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except RegistryError as exc:
        print(f"registry: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MlflowException as exc:
        print(
            f"registry: error: MLflow at {settings.display_uri} failed: {exc.message}. Is the server up "
            "(`make mlflow`) and MLFLOW_TRACKING_URI right?",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
