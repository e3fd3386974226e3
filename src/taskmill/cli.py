"""The ``taskmill`` command line (also ``python -m taskmill``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from taskmill.app import App
from taskmill.errors import ConfigurationError, TaskmillError
from taskmill.worker.process import WorkerConfig, configure_logging, load_app
from taskmill.worker.supervisor import supervise

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns every TaskmillError into one clear line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskmillError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.version_option(package_name="taskmill")
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """taskmill: background tasks for Python."""
    ctx.obj = {"log_level": log_level}


def _app_options(fn: F) -> F:
    fn = click.option("--broker", "broker_url", help="Broker URL (default: TASKMILL_BROKER_URL or the SQLite file).")(
        fn
    )
    return click.option("--app", "app_spec", help="MODULE[:APP] whose broker to use.")(fn)


def _open_app(app_spec: str | None, broker_url: str | None) -> App:
    if app_spec and broker_url:
        raise ConfigurationError("give --app or --broker, not both")
    return load_app(app_spec) if app_spec else App(broker_url)


@cli.command()
@click.argument("app_spec", metavar="MODULE[:APP]")
@click.option("-p", "--processes", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True)
@click.option("-t", "--threads", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-Q", "--queues", help="Comma-separated queues (default: every queue the app's actors use).")
@click.option("--watch", "watch", multiple=True, type=click.Path(exists=True), help="Restart workers on changes.")
@click.option("--burst", is_flag=True, help="Process what is due, then exit.")
@click.option("--grace", type=float, help="Seconds in-flight work may take to finish on stop.")
@click.option("--log-args", is_flag=True, help="Include (truncated) arguments in log lines.")
@click.pass_context
def worker(
    ctx: click.Context,
    app_spec: str,
    processes: int,
    threads: int,
    queues: str | None,
    watch: tuple[str, ...],
    burst: bool,
    grace: float | None,
    log_args: bool,
) -> None:
    """Run worker processes for the actors of MODULE[:APP]."""
    configure_logging(ctx.obj["log_level"])
    app = load_app(app_spec)
    queue_list = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else ()
    served = queue_list or tuple(sorted({a.options.queue for a in app.actors.values()} or {"default"}))
    click.echo(
        f"taskmill worker\n"
        f"  broker:  {app.broker.location}\n"
        f"  queues:  {', '.join(served)}\n"
        f"  workers: {processes} processes x {threads} threads{' (burst)' if burst else ''}\n"
        f"  actors:  {', '.join(sorted(app.actors)) or '(none found)'}",
        err=True,
    )
    app.close()
    config = WorkerConfig(app_spec, processes, threads, queue_list, burst, grace, ctx.obj["log_level"], log_args, watch)
    sys.exit(supervise(config))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.command()
@click.argument("actor_spec", metavar="MODULE:ACTOR")
@click.argument("args", nargs=-1)
@click.option("--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE", help="A keyword argument (repeatable).")
@click.option("--delay", type=float, help="Seconds to wait before it may run.")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher runs first.")
@click.option("--queue", help="Send to this queue instead of the actor's.")
@click.option("--message-id", help="Use this id (sending an id that is still queued does nothing).")
def send(
    actor_spec: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    delay: float | None,
    priority: int | None,
    queue: str | None,
    message_id: str | None,
) -> None:
    """Send a message to MODULE:ACTOR. Each ARG is JSON when it parses as JSON, else a string."""
    module_name, _, actor_name = actor_spec.partition(":")
    if not actor_name:
        raise ConfigurationError("name the actor as MODULE:ACTOR")
    app = load_app(module_name)
    actor = app.get_actor(actor_name)
    keywords = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigurationError(f"--kwarg {item!r} is not KEY=VALUE")
        keywords[key] = _parse_value(value)
    message = actor.send_with_options(
        args=tuple(_parse_value(a) for a in args),
        kwargs=keywords,
        delay=delay,
        priority=priority,
        queue=queue,
        message_id=message_id,
    )
    click.echo(message.id)


@cli.command()
@_app_options
def status(app_spec: str | None, broker_url: str | None) -> None:
    """Per queue: messages ready, delayed, in flight and dead."""
    app = _open_app(app_spec, broker_url)
    rows = app.broker.stats()
    click.echo(f"broker: {app.broker.location}")
    width = max([5, *(len(r.queue) for r in rows)])
    click.echo(f"{'queue':<{width}}  {'ready':>8} {'delayed':>8} {'in flight':>9} {'dead':>8}")
    for r in rows:
        click.echo(f"{r.queue:<{width}}  {r.ready:>8} {r.delayed:>8} {r.in_flight:>9} {r.dead:>8}")
    if not rows:
        click.echo("(no queues yet)")


@cli.group()
def dead() -> None:
    """List, retry and purge dead-lettered messages."""


@dead.command("list")
@_app_options
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--traceback", "show_traceback", is_flag=True, help="Print each traceback too.")
def dead_list(
    app_spec: str | None, broker_url: str | None, queue: str | None, limit: int, offset: int, show_traceback: bool
) -> None:
    """Dead letters, newest first (arguments are not printed)."""
    app = _open_app(app_spec, broker_url)
    for letter in app.broker.dead_letters(queue, limit=limit, offset=offset):
        error = f"{letter.error_type}: {letter.error_message}" if letter.error_type else letter.error_message
        click.echo(
            f"{letter.id}  queue={letter.queue}  reason={letter.reason}  deliveries={letter.deliveries}  {error}"
        )
        if show_traceback and letter.traceback:
            click.echo(letter.traceback.rstrip())


def _selection(ids: tuple[str, ...], queue: str | None, all_: bool) -> tuple[list[str] | None, str | None]:
    if not (ids or queue or all_):
        raise ConfigurationError("choose what: --id ID (repeatable), --queue NAME, or --all")
    if all_ and (ids or queue):
        raise ConfigurationError("--all cannot be combined with --id or --queue")
    return (list(ids) if ids else None), queue


@dead.command("retry")
@_app_options
@click.option("--id", "ids", multiple=True, help="A dead message id (repeatable).")
@click.option("--queue", help="Every dead message of this queue.")
@click.option("--all", "all_", is_flag=True, help="Every dead message.")
def dead_retry(
    app_spec: str | None, broker_url: str | None, ids: tuple[str, ...], queue: str | None, all_: bool
) -> None:
    """Send dead messages back to their queue with a fresh delivery count."""
    selected_ids, selected_queue = _selection(ids, queue, all_)
    count = _open_app(app_spec, broker_url).broker.retry_dead(selected_ids, selected_queue)
    click.echo(f"retried {count} message(s)")


@dead.command("purge")
@_app_options
@click.option("--id", "ids", multiple=True, help="A dead message id (repeatable).")
@click.option("--queue", help="Every dead message of this queue.")
@click.option("--all", "all_", is_flag=True, help="Every dead message.")
def dead_purge(
    app_spec: str | None, broker_url: str | None, ids: tuple[str, ...], queue: str | None, all_: bool
) -> None:
    """Delete dead messages for good."""
    selected_ids, selected_queue = _selection(ids, queue, all_)
    count = _open_app(app_spec, broker_url).broker.purge_dead(selected_ids, selected_queue)
    click.echo(f"purged {count} message(s)")


@cli.command()
@_app_options
@click.argument("queue")
def purge(app_spec: str | None, broker_url: str | None, queue: str) -> None:
    """Delete the ready and delayed messages of QUEUE."""
    click.echo(f"purged {_open_app(app_spec, broker_url).broker.purge(queue)} message(s)")


@cli.group()
def db() -> None:
    """Database schema commands (for brokers that keep one, such as postgresql://)."""


@db.command("migrate")
@_app_options
def db_migrate(app_spec: str | None, broker_url: str | None) -> None:
    """Apply the schema migrations the broker's database lacks (add ?auto_migrate=false to opt out of
    applying them on startup)."""
    app = _open_app(app_spec, broker_url)
    applied = app.broker.migrate()
    click.echo(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="taskmill")
