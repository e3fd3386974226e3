"""taskmill's own Redis client (taskmill.redis_client) against real redis-servers: replies and
error replies, pipelines and transactions, scripts the server forgot, the URL's database, user
and password, TLS, a server that restarts or stays down, a reply that never comes, fork, and
Pub/Sub across a restart.

The shared server (127.0.0.1:6379) serves what needs no fault; a private ``redis-server`` on a
free port (killed when the module ends) serves the rest.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REDIS_SERVER, RedisServer, make_certificates, no_server

from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError
from taskmill.redis_client import RedisClient, connect

SHARED = os.environ.get("TASKMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def client() -> Iterator[RedisClient]:
    try:
        made, _ = connect(SHARED)
        made.call("PING")
    except BrokerUnavailable as exc:
        no_server(f"Redis is not reachable at {SHARED}: {exc}")
    yield made
    made.close()


@pytest.fixture
def key() -> str:
    return f"tmclient:{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server with a TLS listener beside its plain port (when openssl exists)."""
    if shutil.which(REDIS_SERVER) is None:
        no_server(f"{REDIS_SERVER} is not installed")
    directory = tmp_path_factory.mktemp("redis-client")
    with RedisServer(directory / "data", tls=make_certificates(directory / "tls")) as server:
        yield server


@pytest.fixture
def server(private: RedisServer) -> RedisServer:
    private.ensure_running()
    return private


def test_replies_come_back_as_redis_sends_them(client: RedisClient, key: str) -> None:
    assert client.call("SET", key, b"\x00bytes\xff") == b"OK"
    assert client.call("GET", key) == b"\x00bytes\xff"
    assert client.call("GET", key + ":absent") is None
    assert client.call("RPUSH", key + ":list", 1, 2.5, "three") == 3
    assert client.call("LRANGE", key + ":list", 0, -1) == [b"1", b"2.5", b"three"]
    client.call("DEL", key, key + ":list")


def test_an_error_reply_raises_broker_error_and_leaves_the_connection_in_step(client: RedisClient, key: str) -> None:
    client.call("SET", key, "text")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        client.call("LPUSH", key, "x")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        client.pipeline([("GET", key), ("LPUSH", key, "x"), ("STRLEN", key)])
    # every reply of the failed pipeline was read: the next command gets its own
    assert client.pipeline([("GET", key), ("STRLEN", key)]) == [b"text", 4]
    assert client.call("DEL", key) == 1


def test_a_transaction_returns_the_exec_replies(client: RedisClient, key: str) -> None:
    assert client.pipeline([("INCRBY", key, 5), ("PEXPIRE", key, 60_000), ("GET", key)], transaction=True) == [
        5,
        1,
        b"5",
    ]
    with pytest.raises(BrokerError):
        client.pipeline([("SET", key, "x"), ("NO-SUCH-COMMAND",)], transaction=True)  # EXECABORT
    assert client.call("GET", key) == b"5"  # the aborted transaction wrote nothing
    client.call("DEL", key)


def test_a_script_the_server_forgot_is_sent_again(client: RedisClient, key: str) -> None:
    script = client.script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script([key], [2]) == 2  # SCRIPT LOAD, then EVALSHA
    assert script([key], [3]) == 5  # now by its SHA1
    client.call("SCRIPT", "FLUSH")
    assert script([key], [4]) == 9
    client.call("DEL", key)


def test_the_url_names_the_database(key: str) -> None:
    in_path, _ = connect("redis://127.0.0.1:6379/13")
    in_query, _ = connect("redis://127.0.0.1:6379/?db=13")
    other, _ = connect("redis://127.0.0.1:6379/12")
    try:
        in_path.call("SET", key, "db13")
        assert in_query.call("GET", key) == b"db13"
        assert other.call("GET", key) is None
        assert in_path.location == "redis://127.0.0.1:6379/13"
    finally:
        in_path.call("DEL", key)
        for made in (in_path, in_query, other):
            made.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?client_name=x",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
        "redis://127.0.0.1:6379/0?prefix=a{b}",
        "rediss://127.0.0.1:6379/0?ssl_cert_reqs=maybe",
    ],
)
def test_a_bad_url_is_refused_before_any_connection(url: str) -> None:
    with pytest.raises(ConfigurationError):
        connect(url)


def test_a_user_and_password_authenticate_each_connection(server: RedisServer, key: str) -> None:
    admin, _ = connect(server.url("x"))
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.call("ACL", "SETUSER", user, "on", ">s3cr:t/@", "~*", "+@all")
    good, _ = connect(f"redis://{user}:s3cr%3At%2F%40@127.0.0.1:{server.port}/3")
    bad, _ = connect(f"redis://{user}:wrong@127.0.0.1:{server.port}/3")
    try:
        assert good.call("ACL", "WHOAMI") == user.encode()
        good.call("SET", key, "3")
        assert admin.call("SELECT", 3) == b"OK"  # admin's connection now sits on db 3
        assert admin.call("GET", key) == b"3"
        with pytest.raises(BrokerError, match="WRONGPASS"):
            bad.call("PING")
    finally:
        admin.call("ACL", "DELUSER", user)
        for made in (admin, good, bad):
            made.close()


def test_tls_checks_the_servers_certificate(server: RedisServer, key: str, tmp_path: Path) -> None:
    tls_port, ca = server.tls_port, server.ca
    if not tls_port:
        no_server("openssl is not installed, so the server has no TLS listener")
    trusted, _ = connect(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}")
    unchecked, _ = connect(f"rediss://localhost:{tls_port}/0?ssl_cert_reqs=none")
    stranger, _ = connect(f"rediss://localhost:{tls_port}/0?socket_connect_timeout=2")  # the system CAs only
    try:
        assert trusted.call("SET", key, "over tls") == b"OK"
        assert unchecked.call("GET", key) == b"over tls"
        sub = trusted.subscription()
        sub.subscribe("tm-tls")
        assert sub.get(5) == "subscribe"
        assert sub.get(0) is None  # nothing more: a non-blocking look on a TLS socket
        unchecked.call("PUBLISH", "tm-tls", "x")
        assert sub.get(5) == "message"
        sub.close()
        with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.call("PING")
    finally:
        for made in (trusted, unchecked, stranger):
            made.close()


def test_connections_idle_across_a_restart_are_replaced_without_an_error(server: RedisServer, key: str) -> None:
    made, _ = connect(server.url("x"))
    try:
        made.pipeline([("SET", key, "before")])
        server.restart()  # AOF: the key survives; the pooled connection does not
        time.sleep(1.1)  # idle long enough that the pool looks at it before reuse
        assert made.call("GET", key) == b"before"
        server.restart()
        assert made.call("GET", key) == b"before"  # reused at once: the failed try is retried
    finally:
        made.close()


def test_a_server_that_stays_down_raises_broker_unavailable(server: RedisServer) -> None:
    made, _ = connect(server.url("x"))
    server.kill()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="Redis unavailable"):
            made.call("PING")
        assert time.monotonic() - started >= 0.6  # it tried 4 times, waiting 0.1 + 0.2 + 0.4 s between
    finally:
        made.close()
        server.start()


def test_a_reply_that_never_comes_times_out_and_the_connection_is_not_reused(server: RedisServer, key: str) -> None:
    made, _ = connect(f"redis://127.0.0.1:{server.port}/0?socket_timeout=0.2")
    try:
        with pytest.raises(BrokerUnavailable, match="timed out"):
            made.call("BLPOP", key, 1)  # blocks longer than the socket waits
        # a late BLPOP reply (nil) left on a pooled connection would answer this command instead
        made.call("RPUSH", key, "x")
        assert made.call("LPOP", key) == b"x"
    finally:
        made.close()


def test_a_forked_child_opens_its_own_connections(client: RedisClient, key: str) -> None:
    client.call("SET", key, "parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            ok = client.call("GET", key) == b"parent" and client.call("SET", key, "child") == b"OK"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.call("GET", key) == b"child"  # the parent's pooled connection still works
    client.call("DEL", key)


def test_a_subscription_hears_publishes_and_says_when_it_reconnected(server: RedisServer) -> None:
    made, _ = connect(server.url("x"))
    sub = made.subscription()
    try:
        sub.subscribe("tm-a", "tm-b")
        assert [sub.get(5), sub.get(5)] == ["subscribe", "subscribe"]
        assert sub.get(0.05) is None
        made.call("PUBLISH", "tm-b", "1")
        assert sub.get(5) == "message"
        server.restart()
        assert sub.get(5) == "reconnected"
        assert [sub.get(5), sub.get(5)] == ["subscribe", "subscribe"]  # both channels again
        made.call("PUBLISH", "tm-a", "1")
        assert sub.get(5) == "message"
    finally:
        sub.close()
        made.close()


def test_a_closed_client_refuses_commands(client: RedisClient) -> None:
    client.close()
    with pytest.raises(BrokerError, match="closed"):
        client.call("PING")


def test_an_empty_password_means_none(client: RedisClient) -> None:
    blank, _ = connect("redis://:@127.0.0.1:6379/15")  # e.g. redis://:${REDIS_PASSWORD}@... with it unset
    try:
        assert blank.call("PING") == b"PONG"
    finally:
        blank.close()


@pytest.mark.parametrize(
    "option", ["socket_timeout=0", "socket_timeout=-1", "socket_timeout=nan", "socket_connect_timeout=inf"]
)
def test_a_timeout_must_be_a_positive_number(option: str) -> None:
    with pytest.raises(ConfigurationError, match="positive"):
        connect(f"redis://127.0.0.1:6379/0?{option}")


def test_missing_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TLS"):
        connect(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={tmp_path / 'absent.pem'}")
    with pytest.raises(ConfigurationError, match="TLS"):
        connect(f"rediss://127.0.0.1:6379/0?ssl_certfile={tmp_path / 'absent.pem'}")


def test_a_subscription_the_user_may_not_make_raises_broker_error(server: RedisServer) -> None:
    admin, _ = connect(server.url("x"))
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.call("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "resetchannels")  # no channel at all
    limited, _ = connect(f"redis://{user}:pw@127.0.0.1:{server.port}/0")
    sub = limited.subscription()
    try:
        sub.subscribe("tm-forbidden")
        with pytest.raises(BrokerError, match="NOPERM"):
            sub.get(5)
    finally:
        sub.close()
        admin.call("ACL", "DELUSER", user)
        limited.close()
        admin.close()


def test_a_forked_child_subscribes_on_its_own_connection(client: RedisClient) -> None:
    channel = f"tm-fork-{uuid.uuid4().hex}"
    sub = client.subscription()
    sub.subscribe(channel)
    assert sub.get(5) == "subscribe"
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            ok = sub.get(5) == "reconnected" and sub.get(5) == "subscribe"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.call("PUBLISH", channel, "1")
    assert sub.get(5) == "message"  # the parent's socket still carries the parent's subscription
    sub.close()


def test_a_pooled_connection_on_a_high_descriptor_is_reused(client: RedisClient) -> None:
    """Descriptors past 1023 (a busy web process): the idle check must not take them for dead."""
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        made, _ = connect(SHARED)
        made.call("PING")
        ids = set()
        for _ in range(2):
            time.sleep(1.1)  # idle past the check's threshold
            ids.add(made.call("CLIENT", "ID"))
        assert len(ids) == 1
        made.close()
    finally:
        for fd in filler:
            os.close(fd)
