"""iptables rules for bridges and published ports, applied as ``iptables-restore --noflush``
batches beside docker's (and podman's) chains, never flushing them.

Own chains: ``SHALE`` (nat: DNAT of published ports, jumped from PREROUTING and OUTPUT for
local destinations, as docker's ``DOCKER``), ``SHALE-POSTROUTING`` (nat: MASQUERADE of each
subnet leaving by another interface) and ``SHALE-FORWARD`` (filter: jumped from the top of
FORWARD, whose policy docker sets to DROP). Every rule carries a comment: ``shale-net:<bridge>``
for a bridge's rules, ``shale:<container id>`` for a container's, so teardown and the crash
sweep find them in ``iptables-save`` whatever else changed around them.

A chain declared in a ``--noflush`` batch is flushed (measured: nf_tables backend, 1.8.9),
so chains are declared only when ``iptables-save`` shows them missing. One ``flock`` orders
shale's own read-modify-write cycles; each batch is applied atomically by iptables-restore.
"""

from __future__ import annotations

from shale.errors import ShaleError
from shale.network.ipam import RUN_DIR, locked
from shale.record import record

LOCK = RUN_DIR / "iptables.lock"
NAT_CHAINS = ("SHALE", "SHALE-POSTROUTING")
FILTER_CHAINS = ("SHALE-FORWARD",)
JUMPS = {
    "nat": ["-A PREROUTING -m addrtype --dst-type LOCAL -j SHALE",
            "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j SHALE",
            "-A POSTROUTING -j SHALE-POSTROUTING"],
    "filter": ["-I FORWARD 1 -j SHALE-FORWARD"],
}
BRIDGE_PREFIX = "shale+"  # every shale bridge: shale0 and shale-<id>


@record(frozen=True)
class PortRule:
    proto: str      # tcp | udp
    host_ip: str    # 0.0.0.0 = every address
    host_port: int
    ctr_ip: str
    ctr_port: int


def _run(argv: list[str], text: str | None = None) -> str:
    try:
        import subprocess  # only when rules change: not on a plain start

        done = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ShaleError(f"{argv[0]} is not installed: bridge networking needs iptables"
                         ) from None
    if done.returncode != 0:
        raise ShaleError(f"{argv[0]} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def save() -> dict[str, list[str]]:
    """nat and filter -> their lines (chain declarations and rules), one ``iptables-save``."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in _run(["iptables-save"]).splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], []) if line[1:] in ("nat", "filter") else []
        elif line and not line.startswith(("#", "COMMIT")):
            current.append(line)
    return tables


def restore(batches: dict[str, list[str]]) -> None:
    text = "".join(f"*{table}\n" + "".join(f"{ln}\n" for ln in lines) + "COMMIT\n"
                   for table, lines in batches.items() if lines)
    if text:
        _run(["iptables-restore", "--noflush"], text)


def _comment(tag: str) -> str:
    return f"-m comment --comment {tag}"


def bridge_rules(bridge: str, subnet: str, icc: bool = True,
                 internal: bool = False) -> dict[str, list[str]]:
    """A bridge's rules: NAT out, published ports not DNATed back from inside, forwarding
    between its own ports (``icc``), out of it (not for an ``internal`` network), and
    replies into it; nothing between two shale bridges (docker isolates its networks from
    each other too)."""
    tag = _comment(f"shale-net:{bridge}")
    nat = [f"-A SHALE -i {bridge} {tag} -j RETURN"]
    if not internal:
        nat.append(f"-A SHALE-POSTROUTING -s {subnet} ! -o {bridge} {tag} -j MASQUERADE")
    fwd = [f"-A SHALE-FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {tag} "
           "-j ACCEPT",
           f"-A SHALE-FORWARD -i {bridge} -o {bridge} {tag} -j {'ACCEPT' if icc else 'DROP'}",
           f"-A SHALE-FORWARD -i {bridge} -o {BRIDGE_PREFIX} {tag} -j DROP",
           f"-A SHALE-FORWARD -i {bridge} {tag} -j {'DROP' if internal else 'ACCEPT'}"]
    return {"nat": nat, "filter": fwd}


def port_rules(cid: str, bridge: str, rules: list[PortRule]) -> dict[str, list[str]]:
    """docker's DNAT (from anywhere but the bridge itself) and FORWARD accept per port."""
    tag = _comment(f"shale:{cid}")
    nat, fwd = [], []
    for r in rules:
        dst = "" if r.host_ip in ("", "0.0.0.0") else f"-d {r.host_ip}/32 "
        nat.append(f"-A SHALE {dst}! -i {bridge} -p {r.proto} -m {r.proto} --dport "
                   f"{r.host_port} {tag} -j DNAT --to-destination {r.ctr_ip}:{r.ctr_port}")
        fwd.append(f"-A SHALE-FORWARD -d {r.ctr_ip}/32 ! -i {bridge} -o {bridge} -p {r.proto} "
                   f"-m {r.proto} --dport {r.ctr_port} {tag} -j ACCEPT")
    return {"nat": nat, "filter": list(dict.fromkeys(fwd))}  # one accept per container port


def _missing_base(saved: dict[str, list[str]]) -> dict[str, list[str]]:
    """Chain declarations and jumps that are not there yet."""
    out: dict[str, list[str]] = {"nat": [], "filter": []}
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
        lines = saved.get(table, [])
        declared = {ln.split()[0][1:] for ln in lines if ln.startswith(":")}
        out[table] += [f":{ch} - [0:0]" for ch in chains if ch not in declared]
        for jump in JUMPS[table]:
            chain, target = jump.split()[1], jump.split()[-1]
            if not any(ln.startswith(f"-A {chain} ") and ln.endswith(f"-j {target}")
                       for ln in lines):
                out[table].append(jump)
    return out


def _tagged(saved: dict[str, list[str]], tag: str) -> dict[str, list[str]]:
    """``-D`` lines for every saved rule carrying comment ``tag``."""
    out: dict[str, list[str]] = {}
    for table, lines in saved.items():
        dels = ["-D" + ln[2:] for ln in lines if ln.startswith("-A ") and
                (f"--comment {tag} " in ln + " " or f'--comment "{tag}" ' in ln + " ")]
        if dels:
            out[table] = dels
    return out


def ensure_bridge(bridge: str, subnet: str, icc: bool = True, internal: bool = False
                  ) -> None:
    """Own chains, jumps and this bridge's rules, each added only if missing."""
    with locked(LOCK):
        saved = save()
        batch = _missing_base(saved)
        wanted = bridge_rules(bridge, subnet, icc, internal)
        present = _tagged(saved, f"shale-net:{bridge}")
        if sum(len(v) for v in present.values()) != sum(len(v) for v in wanted.values()):
            for table in ("nat", "filter"):
                batch[table] += present.get(table, []) + wanted[table]
        restore(batch)


def remove_bridge(bridge: str) -> None:
    with locked(LOCK):
        restore(_tagged(save(), f"shale-net:{bridge}"))


def add_ports(cid: str, bridge: str, rules: list[PortRule]) -> dict[str, list[str]]:
    """Add them; returns the batch, which ``remove_container`` takes back as it is."""
    batch = port_rules(cid, bridge, rules) if rules else {}
    if batch:
        with locked(LOCK):
            restore(batch)
    return batch


def remove_container(cid: str, added: dict[str, list[str]] | None = None) -> None:
    """Every rule of container ``cid``: the ``added`` batch deleted as it is (one
    iptables-restore), else, or if any of it is gone, those ``iptables-save`` shows with
    its comment (so a crash in the middle of adding them leaves nothing behind)."""
    with locked(LOCK):
        if added:
            try:
                restore({t: ["-D" + ln[2:] for ln in lines] for t, lines in added.items()})
                return
            except ShaleError:
                pass  # some were removed already: the batch failed as a whole
        restore(_tagged(save(), f"shale:{cid}"))


def containers_with_rules() -> set[str]:
    """IDs of the containers that have rules (the crash sweep's view)."""
    out = set()
    for lines in save().values():
        for ln in lines:
            _, sep, rest = ln.partition("--comment shale:")
            if not sep:
                _, sep, rest = ln.partition('--comment "shale:')
            if sep:
                out.add(rest.split()[0].strip('"'))
    return out
