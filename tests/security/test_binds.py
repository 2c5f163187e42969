"""Only the edge is meant to face the network: Triton, MLflow and the gateway bind to loopback by default
and refuse another address unless told so on purpose; and the running stack listens where it says."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from registry.settings import RegistrySettings
from serving.edge.settings import EdgeSettings
from serving.gateway.settings import GatewaySettings
from serving.triton.settings import TritonSettings
from tests.stack_fixture import TOKEN, Stack, descendants

LOOPBACK = {"127.0.0.1", "::1"}


def test_every_internal_service_defaults_to_loopback_and_refuses_a_public_address_unless_allowed() -> None:
    registry = {"model_name": "m", "experiment": "e"}
    assert TritonSettings().host in LOOPBACK
    assert GatewaySettings(admin_token=TOKEN).host in LOOPBACK
    assert RegistrySettings(**registry).host in LOOPBACK
    for public in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(ValidationError, match="TRITON_ALLOW_NON_LOOPBACK"):
            TritonSettings(host=public)
        with pytest.raises(ValidationError, match="GATEWAY_ALLOW_NON_LOOPBACK"):
            GatewaySettings(admin_token=TOKEN, host=public)
        with pytest.raises(ValidationError, match="REGISTRY_ALLOW_PUBLIC_BIND"):
            RegistrySettings(**registry, host=public)
    # Allowed on purpose only.
    assert TritonSettings(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"
    assert GatewaySettings(admin_token=TOKEN, host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"
    # The edge is the one public port: loopback unless set, and a public address needs no override.
    assert EdgeSettings().host in LOOPBACK
    assert EdgeSettings(host="0.0.0.0").host == "0.0.0.0"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 holds four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket of this machine (network namespace): inode -> (address, port)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                address, port = fields[1].split(":")
                found[int(fields[9])] = (_address(address), int(port, 16))
    return found


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    for process in descendants(pid):
        fds = Path(f"/proc/{process}/fd")
        try:
            links = [str(fd.readlink()) for fd in fds.iterdir()]
        except OSError:
            continue  # exited meanwhile
        inodes |= {int(link[8:-1]) for link in links if link.startswith("socket:[")}
    return inodes


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.mlflow
def test_the_running_stack_listens_on_loopback_only_and_on_exactly_its_ports(stack: Stack) -> None:
    ports = stack.ports
    expected = {
        "mlflow": {ports.mlflow},
        "triton": {ports.triton_http, ports.triton_grpc, ports.triton_metrics},
        "controller": set(),
        "gateway-1": {ports.gateways[0]},
        "gateway-2": {ports.gateways[1]},
        "nginx": {ports.edge, ports.edge_internal},
    }
    listening = listening_sockets()
    for name, wanted in expected.items():
        pid = stack.pid(name)
        assert pid is not None, f"{name} is not running"
        bound = {listening[inode] for inode in sockets_of(pid) if inode in listening}
        print(f"{name}: {sorted(bound)}")
        assert {port for _, port in bound} == wanted, f"{name} listens on {sorted(bound)}"
        assert {address for address, _ in bound} <= LOOPBACK, f"{name} listens beyond loopback: {sorted(bound)}"
    # And from the outside: a non-loopback address of this machine reaches none of them.
    outward = _outward_address()
    if outward is not None:
        for port in set().union(*expected.values()):
            with socket.socket() as probe:
                probe.settimeout(0.5)
                assert probe.connect_ex((outward, port)) != 0, f"port {port} answers on {outward}"


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = str(udp.getsockname()[0])
    return None if address in LOOPBACK or address == "0.0.0.0" else address
