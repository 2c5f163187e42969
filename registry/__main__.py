"""``python -m registry``: status, promote, set-weight, step, pause, resume, rollback, abort, history,
materialize, unlock, serve."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from core.rollout_policy import RolloutPolicy
from core.wording import accuracy_words
from registry import events, materialize, rollout, server
from registry.errors import ConcurrentChangeError, RegistryError
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.status import Lineage, Status, read_status
from registry.store import Store

EXIT_ERROR = 1
EXIT_CONFLICT = 3  # another action moved the state or holds the lock: safe to re-read and retry


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give a percent from 0 to 100") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not a percent from 0 to 100")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 1 or more")
    return value


def _version(text: str) -> int:
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an MLflow model version (1, 2, ...)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    parser.add_argument("--model", help="registered model name (default: REGISTRY_MODEL_NAME or params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="champion, canary, candidate with lineage")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    def action(name: str, help_text: str, version_help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--version", type=_version, help=version_help)
        command.add_argument("--reason", help="why, recorded with the event")
        return command

    promote = action(
        "promote",
        "candidate -> canary, canary -> champion, or (first release) candidate -> champion",
        "refuse unless this is the version being promoted",
    )
    promote.add_argument("--to", choices=["canary", "champion"], required=True)
    promote.add_argument("--weight", type=_percent, default=0, help="initial canary share (with --to canary)")
    weight = action("set-weight", "the canary's share of traffic, in percent", "refuse unless this is the canary")
    weight.add_argument("weight", type=_percent, help="percent from 0 to 100")
    action("step", "the canary's weight to the next of params.yaml's rollout.steps", "refuse unless this is the canary")
    action("rollback", "drop the canary, or else return to the previous champion", "refuse unless this is rolled back")
    abort = action("abort", "roll back the canary (never the champion)", "refuse unless this is the canary")
    abort.set_defaults(reason="aborted from the CLI")
    pause = sub.add_parser("pause", help="hold the canary's weight: step refuses until resume")
    pause.add_argument("--reason", help="why, recorded with the event")
    sub.add_parser("resume", help="let the rollout step again")
    hist = sub.add_parser("history", help="recorded actions, newest first")
    hist.add_argument("--limit", type=_positive, default=20, help="how many events (1 or more)")
    hist.add_argument("--json", action="store_true")
    mat = sub.add_parser("materialize", help="write DIR/<N>/ for the champion and the canary, checksums verified")
    mat.add_argument("--out", type=Path, required=True)
    mat.add_argument("--json", action="store_true")
    sub.add_parser("unlock", help="clear the rollout lock now instead of waiting for it to expire")
    sub.add_parser("serve", help="run the MLflow server on the project's store (make mlflow)")
    return parser


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _line(alias: str, lineage: Lineage | None, weight: int) -> str:
    if lineage is None:
        return f"  {alias:<18} -"
    share = f"  {weight}% of traffic" if alias == "canary" else ""
    dirty = " (dirty)" if lineage.dirty else ""
    accuracy = "no accuracy recorded" if lineage.accuracy is None else accuracy_words(lineage.accuracy, lineage.drop)
    return (
        f"  {alias:<18} v{lineage.version}{share}\n"
        f"  {'':<18} {accuracy}, "
        f"{lineage.quantization or '-'}, {lineage.size_bytes if lineage.size_bytes is not None else '-'} bytes\n"
        f"  {'':<18} commit {(lineage.commit or '-')[:12]}{dirty}, dvc.lock {(lineage.dvc_lock_sha256 or '-')[:12]}, "
        f"files {(lineage.served_digest or '-')[:12]}, run {lineage.run_id or '-'}"
    )


def print_status(status: Status, as_json: bool) -> None:
    if as_json:
        print(status.model_dump_json(indent=2))
        return
    paused = ", PAUSED" if status.paused else ""
    print(f"{status.registered_model} at {status.tracking_uri} (generation {status.generation}{paused})")
    for alias, lineage in status.by_alias().items():
        print(_line(alias, lineage, status.canary_weight))
    if status.state_problem:
        print(f"rollout.state is unusable ({status.state_problem}): the next action or controller tick restores it")
    if status.outside_changes:
        print("changed in MLflow outside the project's actions, not settled yet (the controller adopts or puts back):")
        for change in status.outside_changes:
            print(f"  {change}")
    print(f"last event: {status.last_event or '-'}")


def print_events(found: list[Event], as_json: bool) -> None:
    if as_json:
        print(json.dumps([event.model_dump(mode="json") for event in found], indent=2))
        return
    for event in found:
        line = f"{event.at:%Y-%m-%d %H:%M:%S} #{event.generation:<4} {event.summary} (by {event.actor})"
        if event.reason:
            line += f": {event.reason}"
        if event.details:
            line += f" [{event.figures()}]"
        print(line)
    if not found:
        print("no recorded actions")


def print_materialized(result: materialize.Materialized, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    for alias, served in (("champion", result.champion), ("canary", result.canary)):
        if served is not None:
            print(f"{alias} v{served.version}: {served.folder} (serve as {served.served_model})")


def _act(args: argparse.Namespace, settings: RegistrySettings, store: Store, actor: Actor) -> Event:
    reason: str | None = getattr(args, "reason", None)
    if args.command == "promote" and args.to == "canary":
        return rollout.promote_to_canary(store, actor, args.version, args.weight, reason=reason)
    if args.command == "promote":
        return rollout.promote_to_champion(store, actor, args.version, reason=reason)
    if args.command == "set-weight":
        return rollout.set_weight(store, actor, args.weight, args.version, reason=reason)
    if args.command == "step":
        steps = RolloutPolicy().steps  # ROLLOUT_STEPS, as the controller reads it
        return rollout.step(store, actor, steps, args.version, reason=reason)
    if args.command == "rollback":
        return rollout.rollback(store, actor, args.version, reason=reason)
    if args.command == "abort":
        return rollout.abort(store, actor, args.version, reason=reason)
    if args.command == "pause":
        return rollout.pause(store, actor, reason=reason)
    if args.command == "resume":
        return rollout.resume(store, actor)
    return rollout.unlock(store, actor)


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
        print_materialized(materialize.materialize_serving(store, args.out), args.json)
    else:
        event = _act(args, settings, store, actor)
        print(f"{event.summary} (generation {event.generation}, by {event.actor})")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # A command a person waits on should fail in seconds when MLflow is down, not after MLflow's
    # default of seven retries (about four minutes). Stdout carries only this CLI's answer (--json
    # is parsed), not MLflow's run links and progress bars. The environment still wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
