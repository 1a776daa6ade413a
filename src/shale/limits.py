"""Resource limits of ``run``/``create`` checked as dockerd checks them.

``resource_config`` turns the parsed flags (docker's client parses the units) into the limit
fields of ``HostConfig``, with dockerd's errors for bad values and its warnings (and the limit
dropped) where this host's cgroups cannot apply one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument

if TYPE_CHECKING:
    from shale.container_ops import RunOptions

MIN_MEMORY = 6 << 20  # docker's linuxMinMemory
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144


def parse_uint_list(text: str) -> set[int]:
    """docker's ``ParseUintList`` (cpuset syntax ``0-2,4``); ValueError ``invalid format``."""
    out: set[int] = set()
    if not text:
        return out
    bad = ValueError(f"invalid format: {text}")
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not all(x.lstrip("+").isdigit() for x in (lo, hi if dash else lo)):
            raise bad
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise bad
        out.update(range(first, last + 1))
    return out


def resource_config(opts: RunOptions, warnings: list[str], support: Any = None
                    ) -> dict[str, Any]:
    """The limit fields of ``HostConfig``, checked as dockerd's
    ``verifyPlatformContainerResources`` + ``adaptContainerSettings`` do: its errors for bad
    values, its warnings (and the limit dropped) where this host's cgroups cannot apply one,
    ``MemorySwap`` = 2 x ``Memory`` when not given."""
    from shale.runtime.cgroups import host_support

    sup = support if support is not None else host_support()
    memory, swap = opts.memory, opts.memory_swap
    if memory < 0 or swap < -1:
        raise InvalidArgument("invalid memory or memory-swap value")
    if memory and memory < MIN_MEMORY:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if memory > 0 and not sup.memory:
        warnings.append("Your kernel does not support memory limit capabilities or the cgroup "
                        "is not mounted. Limitation discarded.")
        memory, swap = 0, -1
    if memory > 0 and swap != -1 and not sup.swap:
        warnings.append("Your kernel does not support swap limit capabilities or the cgroup is "
                        "not mounted. Memory limited without swap.")
        swap = -1
    if memory > 0 and swap > 0 and swap < memory:
        raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, "
                              "see usage")
    if memory == 0 and swap > 0:
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap "
                              "limit, see usage")
    if memory > 0 and swap == 0:
        swap = 2 * memory  # docker's default: as much swap as memory
    nano = opts.nano_cpus
    if nano > 0 and not sup.cpu_cfs:
        raise InvalidArgument("NanoCPUs can not be set, as your kernel does not support CPU CFS "
                              "scheduler or the cgroup is not mounted")
    ncpu = len(os.sched_getaffinity(0))
    # the kernel's smallest quota is 1 ms of the 100 ms period: 0.01 CPU
    if nano < 0 or nano > ncpu * 1_000_000_000 or 0 < nano < 10_000_000:
        raise InvalidArgument(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only "
                              f"{ncpu} CPUs available")
    shares = opts.cpu_shares
    if shares > 0 and not sup.cpu_shares:
        warnings.append("Your kernel does not support CPU shares or the cgroup is not mounted. "
                        "Shares discarded.")
        shares = 0
    if shares < 0:
        shares = MIN_CPU_SHARES
    shares = min(shares, MAX_CPU_SHARES)
    cpuset = opts.cpuset_cpus
    if cpuset and not sup.cpuset:
        warnings.append("Your kernel does not support cpuset or the cgroup is not mounted. "
                        "Cpuset discarded.")
        cpuset = ""
    try:
        wanted = parse_uint_list(cpuset)
    except ValueError as e:
        raise InvalidArgument(f"Invalid value {cpuset} for cpuset cpus: {e}") from None
    if wanted and not wanted <= parse_uint_list(sup.cpus):
        raise InvalidArgument(f"Requested CPUs are not available - requested {cpuset}, "
                              f"available: {sup.cpus}")
    pids: int | None = opts.pids_limit if opts.pids_limit > 0 else None
    if pids is not None and not sup.pids:
        warnings.append("Your kernel does not support PIDs limit capabilities or the cgroup is "
                        "not mounted. PIDs limit discarded.")
        pids = None
    return {"Memory": memory, "MemorySwap": swap, "NanoCpus": nano, "CpuShares": shares,
            "CpusetCpus": cpuset, "PidsLimit": pids}
