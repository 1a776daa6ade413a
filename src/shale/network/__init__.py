"""Container networking (DESIGN.md section 7 names it ``runtime/network.py``; it grew into a
package of its own, beside ``runtime/``, which it never imports beyond ``linux``'s
syscalls).

Kernel and host objects, lowest first:

- ``netlink``   rtnetlink over a raw socket: bridges, veth pairs, addresses, routes
- ``netns``     per-container network namespaces pinned by a bind mount
- ``ipam``      the address allocator (one file per address; locks; ``/run/shale``)
- ``iptables``  NAT, forwarding and published-port rules as iptables-restore batches
- ``bridge``    a network's bridge made ready (link, gateway, forwarding, rules)
- ``hosts``     /etc/hosts (names on user networks) and resolv.conf

Engine level:

- ``store``     network records (``networks`` table) and the ``network`` verbs
- ``config``    the network fields of ``create`` (``--network``, ``-p``, ``--expose``)
- ``ports``     docker's port syntax, the host sockets, docker's port shapes
- ``endpoint``  a container's network at start (plan, bind, setup) and at stop (teardown)
- ``proxy``     the published-port relay that runs in the container's monitor
- ``connect``   ``network connect`` / ``disconnect``
- ``settings``  ``NetworkSettings`` of inspect, ps columns
- ``reconcile`` the crash sweep
"""
